"""The MLflow layout of a federated job. With fedsilo/artifacts.py (mlflow-artifacts: URIs) and
fedsilo/mlflow_model.py (the logged model's loader), the only place that imports MLflow.

experiment = scenario name; a parent run (fedsilo.role=federation) with the flattened scenario as
params and the global metrics per round; a child run per silo (fedsilo.role=silo,
fedsilo.silo=<name>) with its metrics per round and its data summary as a dataset input; the
global model of every round as a LoggedModel whose metrics are linked by model_id; the final model
registered as `<scenario>-global`, alias `champion` moved only when the new model is as good.
The names themselves are in `names` (a contract: do not rename).

    names       the MLflow names fedsilo writes and reads
    store       reporting a store that cannot answer (RegistryUnavailable); shared write helpers
    runs        the job's parent and silo runs: start, take up again, log data/rounds/matrix/tags
    packaging   a round's global model as a LoggedModel pyfunc; the pretrained checkpoint
    registry    the champion, its weights, registering with the alias rule
    queries     read-side: recorded scenarios, `fedsilo compare`'s tables, a metric by round
    resume      an interrupted job's runs, last completed round and history
    tracker     FederationTracker, the engine's facade over the parts above
"""

from fedsilo.tracking.names import (
    CHAMPION,
    KIND,
    KIND_TAG,
    MATRIX_TABLE,
    ROLE,
    SCENARIO_FILE,
    SILO,
    STRATEGY_STATE,
)
from fedsilo.tracking.packaging import (
    log_pretrained,
    logged_model_files,
    model_weights_path,
    serving_requirements,
)
from fedsilo.tracking.queries import (
    compare,
    job_scenario,
    latest_job_run,
    metric_by_round,
    recorded_scenario,
    silo_matrices,
)
from fedsilo.tracking.store import code_commit, ensure_experiment, scenario_yaml
from fedsilo.tracking.tracker import FederationTracker

__all__ = [
    "CHAMPION",
    "KIND",
    "KIND_TAG",
    "MATRIX_TABLE",
    "ROLE",
    "SCENARIO_FILE",
    "SILO",
    "STRATEGY_STATE",
    "FederationTracker",
    "code_commit",
    "compare",
    "ensure_experiment",
    "job_scenario",
    "latest_job_run",
    "log_pretrained",
    "logged_model_files",
    "metric_by_round",
    "model_weights_path",
    "recorded_scenario",
    "scenario_yaml",
    "serving_requirements",
    "silo_matrices",
]
