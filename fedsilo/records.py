"""What a job records and returns: torch-free, so the tracker and the CLI can use them lightly."""

from dataclasses import dataclass, field

from pydantic import BaseModel

VALIDATION_ACCURACY = "global_validation_accuracy"  # a round's global model on the validation rows
VALIDATION_F1_MACRO = "global_validation_f1_macro"  # the same rows' macro-F1
VALIDATION_SILOS = "global_validation_silos"  # how many silos' validation scores the median is over
ADAPTER = "lora_adapter.safetensors"  # logged with a LoRA job's merged model: what silos exchange


@dataclass
class RoundRecord:
    """What a reporter is told after each round (round 0: the starting model)."""

    round_index: int
    rounds: int
    global_accuracy: float
    silo_local: dict[str, float | None] = field(default_factory=dict)
    silo_global: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    missing: list[str] = field(default_factory=list)
    validation_accuracy: float | None = None  # the global model on the silos' validation rows


@dataclass(frozen=True)
class ResumePoint:
    """Where a job interrupted after `round_index` completed rounds goes on from: that round's
    logged global model, the strategy's state saved with it, and the rounds already recorded."""

    round_index: int
    weights_path: str
    strategy_state_path: str | None
    model_id: str | None
    history: list[RoundRecord]


class JobResult(BaseModel):
    """What a federated job produced, returned by the flow and printed by the CLI."""

    job: str
    experiment: str
    parent_run_id: str
    tracking_uri: str = ""
    rounds: int
    initial_accuracy: float
    final_accuracy: float  # the kept round's global model (kept_round; the last round by default)
    kept_round: int | None = None  # the round whose global model the job kept and registered
    curve: list[float] = []  # global accuracy on the union of test splits, round 0 first
    personalized: dict[str, float] = {}  # each silo's personalized accuracy on its own test split
    kept: dict[str, str] = {}  # the model each silo keeps: global, personalized or alone
    kept_accuracy: dict[str, float] = {}  # that model on the silo's own test split
    alone_accuracy: dict[str, float] = {}  # what the silo would have had alone, there
    registered_model: str | None = None
    registered_version: str | None = None  # MLflow version number, as a string
    champion: bool = False
    champion_reason: str = ""
    privacy: str = ""  # the guarantees the job's privacy options gave, in words (empty: none)
