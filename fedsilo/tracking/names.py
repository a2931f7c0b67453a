"""The MLflow names fedsilo writes and reads: a contract that users and dashboards depend on."""

from fedsilo import records

# run tags
ROLE, SILO, JOB, SCENARIO = "fedsilo.role", "fedsilo.silo", "fedsilo.job", "fedsilo.scenario"
FEDERATION, SILO_ROLE, PRETRAIN_ROLE = "federation", "silo", "pretrain"
PARENT = "mlflow.parentRunId"
NOTE = "mlflow.note.content"
VERSION, GIT_COMMIT = "fedsilo.version", "mlflow.source.git.commit"
REGISTERED_VERSION, CHAMPION_TAG, CHAMPION_REASON = (
    "fedsilo.registered_version",
    "fedsilo.champion",
    "fedsilo.champion_reason",
)

# experiment tags; model training, not GenAI: the MLflow UI then opens the experiment on its runs table
DOMAIN = "fedsilo.domain"
KIND_TAG = "mlflow.experimentKind"
KIND = {KIND_TAG: "custom_model_development"}

# metrics the read side relies on
GLOBAL_ACCURACY, LOCAL_ACCURACY, ANSWERED, ROUND_SECONDS = (
    "global_accuracy",
    "local_accuracy",
    "answered",
    "round_seconds",
)
VALIDATION_ACCURACY = records.VALIDATION_ACCURACY  # the global model on the silos' validation rows

# logged models and the registry
ROUND = "fedsilo.round"  # tag of a logged global model
GLOBAL_MODEL_TYPE, PRETRAINED_MODEL_TYPE = "fedsilo-global", "fedsilo-pretrained"
CHAMPION = "champion"  # alias of the registered model

# artifacts
SCENARIO_FILE = "scenario.yaml"
MATRIX_TABLE = "silo_matrix.json"
ACCURACY_PLOT, MATRIX_PLOT = "plots/accuracy_by_round.png", "plots/silo_matrix.png"
STRATEGY_STATE = "strategy_state.safetensors"  # saved beside a round's global model weights
