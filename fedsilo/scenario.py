"""The scenario file: a pydantic schema, loading from YAML, overrides and readable errors.

A scenario is data. Every name in it (model kind, source kind, partitioner, strategy) comes from
a closed list, so a scenario file can never make fedsilo import or run code.

`federation.strategy` is the named strategy's settings record, defined once beside its class in
fedsilo/strategies; a plain name (`strategy: fedadam`) stands for its defaults, and settings that
older scenarios wrote flat in `federation` are folded into it.
"""

import codecs
import math
import os
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from fedsilo.errors import ScenarioError, UnknownKind
from fedsilo.names import registered_model_name
from fedsilo.strategies import (
    STRATEGIES,
    BuiltinSettings,
    FedAvgSettings,
    StrategySettings,
    strategy_options,
)

Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=64)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # .inf or .nan is never a setting


class LoraSpec(Strict):
    """LoRA adapters (peft) on a BERT-family encoder: silos train and exchange only these."""

    r: int = Field(8, ge=1, le=256, description="rank of each adapter")
    alpha: int = Field(16, ge=1, description="scaling numerator: the adapter output is scaled by alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapters' input")
    target_modules: list[str] = Field(
        default_factory=lambda: ["query", "value"],
        min_length=1,
        description="names of the Linear layers that get adapters (BERT: query, key, value, dense)",
    )


IMAGE_MODELS = ("cnn",)
"""Model kinds that read images; every other kind reads text."""


class ModelSpec(Strict):
    """The shared model every silo fine-tunes."""

    kind: Literal["bert", "cnn"] = Field(description="bert: text classifier; cnn: image classifier")
    source: str = Field(
        "packaged:all-MiniLM-L6-v2",
        description=(
            "Pretrained starting point. bert: 'packaged:all-MiniLM-L6-v2' (offline), "
            "'tiny-random' (tests), a local folder or a Hugging Face hub id. cnn: a checkpoint "
            "file from `fedsilo pretrain`, an MLflow model URI (models:/..., runs:/...), "
            "or 'random'."
        ),
    )
    max_length: int = Field(128, ge=8, le=512, description="bert: tokens kept per text")
    lora: LoraSpec | None = Field(
        None, description="bert: train and exchange LoRA adapters and the head only; null: the whole model"
    )

    @field_validator("lora", mode="before")
    @classmethod
    def _lora_switch(cls, value: Any) -> Any:
        """`lora: true` takes the defaults and `lora: false` turns it off, as in older scenarios."""
        if value is True:
            return {}
        return None if value is False else value

    @model_validator(mode="after")
    def _lora_needs_bert(self) -> "ModelSpec":
        if self.lora is not None and self.kind != "bert":
            raise ValueError("model.lora applies to model.kind 'bert'; remove it for the CNN")
        return self

    @property
    def takes_images(self) -> bool:
        """Whether the model reads images rather than text."""
        return self.kind in IMAGE_MODELS


class SourceSpec(Strict):
    """A data source; `holds_images` says whether its rows are images (else texts)."""

    holds_images: ClassVar[bool] = False


class GeneratedSource(SourceSpec):
    """Built-in offline generator for the scenario's domain; adds a `silo` column."""

    kind: Literal["generated"] = "generated"
    rows_per_silo: int = Field(300, ge=4, le=1_000_000, description="examples generated for each silo")
    label_noise: float = Field(0.05, ge=0, lt=1, description="share of labels flipped at random")
    label_skew: float | None = Field(
        2.0, gt=0, description="Dirichlet alpha of each silo's label mix; null for uniform"
    )


class TableSource(SourceSpec):
    """A local CSV or Parquet file with a text and a label column."""

    kind: Literal["csv", "parquet"]
    path: str
    text_column: str = "text"
    label_column: str = "label"
    encoding: str = Field("utf-8", description="csv: the file's text encoding, e.g. utf-8, latin-1, cp1252")

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError("unknown encoding; use a Python codec name such as utf-8 or latin-1") from None
        return value


class NpzSource(SourceSpec):
    """Images in MedMNIST's NPZ layout (train/val/test _images and _labels arrays)."""

    holds_images: ClassVar[bool] = True

    kind: Literal["npz"]
    path: str
    download: str | None = Field(
        None, description="MedMNIST flag (e.g. 'pneumoniamnist') to download when the file is missing"
    )


class HuggingFaceSource(SourceSpec):
    """A Hugging Face dataset (needs internet and the `datasets` package)."""

    kind: Literal["huggingface"]
    dataset: str
    config: str | None = None
    split: str = "train"
    text_column: str = "text"
    label_column: str = "label"


Source = Annotated[GeneratedSource | TableSource | NpzSource | HuggingFaceSource, Field(discriminator="kind")]
SOURCE_KINDS: dict[str, type[SourceSpec]] = {
    kind: cls
    for cls in get_args(get_args(Source)[0])
    for kind in get_args(cls.model_fields["kind"].annotation)
}
"""The closed list of data source kinds and the record each one is written as."""


class IidPartition(Strict):
    kind: Literal["iid"]


class DirichletPartition(Strict):
    """Label skew: each label is spread over silos by proportions drawn from Dirichlet(alpha)."""

    kind: Literal["dirichlet"]
    alpha: float = Field(gt=0, description="smaller is more skewed (0.1 severe, 100 near IID)")


class QuantityPartition(Strict):
    """Quantity skew: silo sizes drawn from Dirichlet(alpha), labels mixed IID."""

    kind: Literal["quantity"]
    alpha: float = Field(1.0, gt=0)


class NaturalPartition(Strict):
    """A column of the data names the silo each row belongs to."""

    kind: Literal["natural"]
    column: str = "silo"


Partition = Annotated[
    IidPartition | DirichletPartition | QuantityPartition | NaturalPartition,
    Field(discriminator="kind"),
]


class DataSpec(Strict):
    source: Source = Field(default_factory=GeneratedSource)
    partition: Partition = Field(default_factory=lambda: NaturalPartition(kind="natural"))
    labels: list[str] | None = Field(
        None, description="label names in order; derived from the data when omitted"
    )


class SiloSpec(Strict):
    name: Name
    data: Source | None = Field(None, description="this silo's own data, instead of a partition")


def _strategy_mapping(value: Any) -> Any:
    """`federation.strategy` as a mapping with a name: a plain name stands for its defaults, and a
    record without a name is FedAvg's."""
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, StrategySettings):
        return value.model_dump()
    if isinstance(value, dict) and "name" not in value:
        return {"name": FedAvgSettings.strategy_name(), **value}
    return value


def _all_options() -> set[str]:
    return {option for options in strategy_options().values() for option in options}


def _fold_flat_settings(data: dict[str, Any], own: set[str]) -> dict[str, Any]:
    """Move settings written flat in `federation` (older scenarios: `strategy: fedavgm` with
    `server_momentum: 0.9` beside it) into the strategy's record; one written twice is an error.
    A flat null meant "the strategy's default", as in jobs recorded then. `own` are federation's
    own fields, never moved."""
    moved = [key for key in data if key in _all_options() - own]
    flat = {key: data[key] for key in moved if data[key] is not None}
    if not flat:
        return {key: value for key, value in data.items() if key not in moved}
    record = _strategy_mapping(data.get("strategy", FedAvgSettings.strategy_name()))
    if not isinstance(record, dict):
        return data  # not a record: its own validation says so
    for key, value in flat.items():
        if key in record and record[key] != value:
            raise ValueError(
                f"{key} is set twice, as federation.{key} ({value!r}) and federation.strategy.{key} "
                f"({record[key]!r}); keep federation.strategy.{key}"
            )
    rest = {key: value for key, value in data.items() if key not in moved}
    return {**rest, "strategy": {**record, **flat}}


def _check_options(record: dict[str, Any]) -> type[StrategySettings]:
    """The record class of the named strategy; a setting that another strategy reads names both."""
    name = record["name"]
    if not isinstance(name, str) or name not in STRATEGIES:
        raise ValueError(str(UnknownKind("strategy", name, list(STRATEGIES))))
    settings = STRATEGIES[name].Settings
    used = settings.options()
    for key in record:
        if key in _all_options() and key not in used:
            raise ValueError(
                f"{key} is set but strategy {record['name']!r} does not use it "
                f"(it reads: {', '.join(used) or 'nothing'}); remove it or change the strategy"
            )
    return settings


class FederationSpec(Strict):
    rounds: int = Field(5, ge=1, le=10_000)
    local_epochs: int | None = Field(
        None, ge=1, description="passes over the silo's training split per round; default 1"
    )
    local_steps: int | None = Field(
        None,
        ge=1,
        description="optimizer steps per round instead of epochs (a round can be part of an epoch)",
    )
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(5e-5, gt=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    learning_rate_schedule: Literal["constant", "linear"] = Field(
        "constant",
        description=(
            "linear: warm up over the first warmup_fraction of a silo's steps in the job, then decay "
            "toward 0 at its last round's last step, one course across all rounds (short rounds do not "
            "start it again); the alone and personalized models follow their own. constant: "
            "learning_rate throughout. SCAFFOLD's local steps are always constant"
        ),
    )
    warmup_fraction: float = Field(
        0.1, ge=0, lt=1, description="linear schedule: share of the steps that warm the learning rate up"
    )
    strategy: SerializeAsAny[BuiltinSettings] = Field(
        default_factory=FedAvgSettings,
        description=(
            "the aggregation strategy and its settings: fedavg, fedavgm (server momentum), fedprox "
            "(proximal term at the silos), fedadam, fedyogi, fedadagrad (adaptive server steps), median, "
            "trimmed_mean (robust to outliers). In a file, a plain name takes its defaults "
            "(`strategy: fedadam`), or a record sets them (`strategy: {name: fedadam, beta1: 0.95}`)"
        ),
    )
    transfer_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description=(
            "how silos send updates: float32 weights, or their change from the global model in 16 bits "
            "(half the bytes)"
        ),
    )
    max_update_norm: float | None = Field(
        None,
        gt=0,
        description="leave out updates that move the global model by more than this L2 norm; null: no bound",
    )
    personal_layers: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list,
        description=(
            "name patterns (fnmatch) of tensors that stay at each silo, never sent nor aggregated "
            "(FedPer), e.g. ['classifier.*']; the registered global model keeps their starting values"
        ),
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seeds data, partition, heads and training")
    min_silos: int | None = Field(None, ge=1, description="silos needed per round; null: all")
    silo_timeout_seconds: float = Field(3600, gt=0, description="one silo's fit or evaluation")
    silo_retries: int = Field(1, ge=0, description="Prefect retries of a silo's fit that failed or timed out")
    mode: Literal["embedded", "distributed"] = Field(
        "embedded",
        description=(
            "embedded: silos run as tasks in this process; distributed: each silo is a flow run "
            "on its own worker (`fedsilo worker`), reached through PREFECT_API_URL"
        ),
    )
    exchange: str | None = Field(
        None,
        description=(
            "where weights cross: a folder or fsspec URL (s3://...) every participant can reach. "
            "Default: this process's memory (embedded), the job's MLflow run artifacts (distributed)"
        ),
    )
    silo_pickup_seconds: float = Field(
        120, gt=0, description="distributed: time a silo's worker has to pick up and start a flow run"
    )

    @model_validator(mode="before")
    @classmethod
    def _flat_strategy_settings(cls, data: Any) -> Any:
        return _fold_flat_settings(data, set(cls.model_fields)) if isinstance(data, dict) else data

    @field_validator("strategy", mode="wrap")
    @classmethod
    def _strategy_record(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> StrategySettings:
        """Checked by the named strategy's own record (not `handler`'s union), so a strategy
        registered after this schema was built is accepted too; the annotation gives the run form
        the built-in records."""
        record = _strategy_mapping(value)
        if not isinstance(record, dict):
            raise ValueError("expected a strategy name (fedadam) or a record ({name: fedadam, beta1: 0.9})")
        return _check_options(record).model_validate(record)

    @model_validator(mode="after")
    def _consistent(self) -> "FederationSpec":
        if self.local_epochs is not None and self.local_steps is not None:
            raise ValueError("set local_epochs or local_steps, not both")
        if self.mode == "distributed" and (self.exchange or "").startswith("memory://"):
            raise ValueError(
                "exchange memory:// lives in one process; distributed silos need a store they all reach "
                "(a shared folder, s3://...) or no exchange (the job's MLflow artifacts)"
            )
        return self

    @property
    def epochs(self) -> int:
        """Local epochs per round when the round is not counted in steps."""
        return self.local_epochs or 1


class EvaluationSpec(Strict):
    test_fraction: float = Field(0.2, gt=0, lt=1, description="each silo's held-out share")
    metric: Literal["accuracy", "f1_macro"] = Field(
        "accuracy",
        description=(
            "metric that decides whether a new model becomes champion, which round's global model a "
            "job keeps and which model each silo keeps"
        ),
    )
    personalize_steps: int = Field(
        0,
        ge=0,
        description=(
            "after the last round, each silo fine-tunes the global model this many steps on its own "
            "training split and scores it on its own test split; 0: off"
        ),
    )
    validation_fraction: float = Field(
        0.1,
        ge=0,
        lt=0.5,
        description=(
            "share of each silo's training rows held out to choose the model it keeps (global, "
            "personalized or alone); never trained on by any model; 0: the silo keeps the global model"
        ),
    )
    keep_best_round: bool = Field(
        True,
        description=(
            "keep (and register) the round whose global model scored best on the silos' validation "
            "rows (in metric), not the last round's; needs validation_fraction > 0. The curves are "
            "logged as global_validation_accuracy / _f1_macro, the choice as the tag fedsilo.kept_round"
        ),
    )
    alone: bool = Field(
        True,
        description=(
            "each silo also trains the starting model on its own rows alone, for the same steps as its "
            "federated work, and reports it beside the model it keeps (reused while its rows, the model "
            "and the budget are unchanged)"
        ),
    )
    personalization: Literal["finetune", "ditto"] = Field(
        "finetune",
        description=(
            "the personalized model each silo may keep: finetune (the final global model fine-tuned "
            "personalize_steps steps) or ditto (a personal model trained every round beside the "
            "federated one, pulled toward the global model by ditto_lambda; Li et al. 2021)"
        ),
    )
    ditto_lambda: float = Field(
        0.1,
        ge=0,
        le=1e6,
        description="ditto: weight of lambda/2 ||v - w_global||^2; 0: the silo's rows alone",
    )

    @property
    def personalized_by(self) -> str:
        """How the personalized models were made, in words."""
        if self.personalization == "ditto":
            return f"ditto, lambda {self.ditto_lambda:g}"
        return f"{self.personalize_steps} steps"

    @model_validator(mode="after")
    def _one_personalization(self) -> "EvaluationSpec":
        if self.personalization == "ditto" and self.personalize_steps:
            raise ValueError(
                "evaluation.personalize_steps fine-tunes the final global model; with "
                "evaluation.personalization ditto the personal model trains every round instead: set one"
            )
        return self


class RetrainingSpec(Strict):
    """Recurring federated retraining: when to run again, and from which model."""

    schedule: str | None = Field(
        None, description="cron for the scenario's deployment, e.g. '0 6 * * 1' (Mondays 06:00); null: none"
    )
    timezone: str = Field("UTC", description="IANA timezone of the schedule")
    warm_start: bool = Field(
        False,
        description=(
            "start from the `champion` alias of the scenario's registered model (name-global) "
            "when there is one, else from the pretrained model"
        ),
    )
    replace_incompatible_champion: bool = Field(
        False,
        description=(
            "move `champion` to the new model when the current champion has another architecture or "
            "label set (they cannot be compared); false: register the new version, keep the alias"
        ),
    )

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            from cronsim import CronSim, CronSimError

            try:
                CronSim(value, datetime(2026, 1, 1))
            except CronSimError as exc:
                raise ValueError(
                    f"not a cron expression ({exc}); e.g. '0 6 * * 1' is Mondays 06:00"
                ) from None
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown timezone; use an IANA name such as 'UTC' or 'Europe/Paris'") from None
        return value


class TrackingSpec(Strict):
    experiment: str | None = Field(None, description="MLflow experiment; default: scenario name")
    registered_model: str | None = Field(None, description="default: the scenario name + '-global'")
    log_models: bool = Field(True, description="log the global model of every round")


class DPSpec(Strict):
    """Record-level DP-SGD at every silo (Opacus): a noise multiplier, or the one that spends
    `target_epsilon` over the job's rounds."""

    target_epsilon: float | None = Field(
        None, gt=0, description="privacy budget per silo for the whole job; a silo stops training at it"
    )
    delta: float = Field(1e-5, gt=0, lt=1, description="delta of (epsilon, delta)-DP; below 1/n_train")
    max_grad_norm: float = Field(1.0, gt=0, description="each example's gradient is clipped to this L2 norm")
    noise_multiplier: float | None = Field(
        None, gt=0, description="noise std / max_grad_norm; null: derived from target_epsilon"
    )
    count_noise: float = Field(
        10.0,
        gt=0,
        description="std of the Gaussian noise on the training count a silo reports (its FedAvg weight); "
        "drawn once per data version and counted in epsilon",
    )
    secure_mode: bool = Field(
        False,
        description="draw sampling and noise from a cryptographically secure generator (ChaCha20) "
        "and build the noise as Opacus's secure mode does; slower",
    )

    @model_validator(mode="after")
    def _budget_or_noise(self) -> "DPSpec":
        if self.target_epsilon is None and self.noise_multiplier is None:
            raise ValueError("set target_epsilon, noise_multiplier or both")
        return self


class CentralDPSpec(Strict):
    """Client-level DP of the released global model: clip each silo's update, noise the sum."""

    noise_multiplier: float = Field(gt=0, description="noise std on the sum / clipping_norm")
    clipping_norm: float = Field(gt=0, description="L2 bound of one silo's change to the global model")
    delta: float = Field(1e-5, gt=0, lt=1, description="delta of the client-level guarantee")


class PrivacySpec(Strict):
    """What protects the exchanged parameters; see "Privacy" in the README."""

    secure_aggregation: bool = Field(
        False, description="double-masked updates: the coordinator learns only their weighted sum"
    )
    clipping_range: float = Field(
        1.0,
        gt=0,
        description="secure aggregation: each coordinate of a silo's change is clipped to +-this",
    )
    secagg_threshold: int | None = Field(
        None,
        ge=2,
        description=(
            "secure aggregation: shares that rebuild a silo's masking secrets (silos that must stay "
            "to the end of a round); a strict majority at least (silos also refuse a lower one); "
            "null: a strict majority of the round's silos, at least 2"
        ),
    )
    secagg_norm_bound: float | None = Field(
        None,
        gt=0,
        description=(
            "secure aggregation: each silo clips its change to this L2 norm and the sum is checked "
            "against it; null: federation.max_update_norm or central_dp.clipping_norm, else none"
        ),
    )
    dp: DPSpec | None = Field(None, description="record-level DP-SGD at each silo; null: off")
    central_dp: CentralDPSpec | None = Field(
        None, description="client-level DP: clipping and Gaussian noise at the coordinator; null: off"
    )


class Scenario(Strict):
    """One federated fine-tuning job: who takes part, on what data, with which model."""

    name: Name
    domain: Literal["medical", "finance", "telecom"]
    description: str = ""
    model: ModelSpec
    data: DataSpec = Field(default_factory=DataSpec)
    silos: list[SiloSpec] = Field(min_length=1)
    federation: FederationSpec = Field(default_factory=FederationSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    retraining: RetrainingSpec = Field(default_factory=RetrainingSpec)
    privacy: PrivacySpec = Field(default_factory=PrivacySpec)

    @field_validator("silos")
    @classmethod
    def _unique_names(cls, silos: list[SiloSpec]) -> list[SiloSpec]:
        names = [s.name for s in silos]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"silo names must be unique; repeated: {', '.join(duplicates)}")
        return silos

    @model_validator(mode="after")
    def _consistent(self) -> "Scenario":
        minimum = self.federation.min_silos
        if minimum is not None and minimum > len(self.silos):
            raise ValueError(
                f"federation.min_silos is {minimum} but the scenario has {len(self.silos)} silos"
            )
        self._inputs_fit_the_model()
        self._privacy_fits()
        return self

    @model_validator(mode="after")
    def _dp_settled_by_the_scenario(self) -> "Scenario":
        """Under privacy.dp, what a silo would otherwise derive from its rows comes from the scenario:
        the label names (a label set read from the data would leave the silo un-noised), and delta
        below 1/n where the scenario fixes the silos' training counts (each silo checks it too)."""
        dp = self.privacy.dp
        if dp is None:
            return self
        if not self.data.labels:
            raise ValueError(
                "privacy.dp needs data.labels (the label names, in the model's output order): under "
                "DP-SGD a silo must not reveal which labels its rows hold"
            )
        fewest = self._fewest_training_rows()
        if fewest is not None and dp.delta * fewest >= 1:
            raise ValueError(
                f"privacy.dp.delta {dp.delta:g} must be below 1/n: a silo here trains on {fewest} rows or "
                f"fewer, so delta must be below {1 / fewest:.3g}"
            )
        return self

    def _fewest_training_rows(self) -> int | None:
        """The smallest bound the scenario puts on a silo's training rows, or None when none is known
        (generated data only: a silo has rows_per_silo rows, or at most all the shared rows)."""
        shared = sum(1 for s in self.silos if s.data is None)
        natural = isinstance(self.data.partition, NaturalPartition) and self.data.partition.column == "silo"
        bounds = []
        for silo in self.silos:
            source = silo.data or self.data.source
            if isinstance(source, GeneratedSource):
                rows = source.rows_per_silo * (1 if silo.data or natural else shared)
                bounds.append(rows - math.ceil(self.evaluation.test_fraction * rows))
        return min(bounds, default=None)

    def _inputs_fit_the_model(self) -> None:
        """An image model needs image sources only, a text model text sources only."""
        images = [source.holds_images for source in self.sources()]
        image_kinds = ", ".join(kind for kind, cls in SOURCE_KINDS.items() if cls.holds_images)
        kind = self.model.kind
        if self.model.takes_images and not all(images):
            raise ValueError(f"model.kind {kind!r} needs image data (data.source.kind: {image_kinds})")
        if not self.model.takes_images and any(images):
            raise ValueError(f"model.kind {kind!r} needs text data, not images ({image_kinds})")

    def _privacy_fits(self) -> None:
        """Privacy options that cannot hold together with the rest of the scenario, named."""
        privacy, federation = self.privacy, self.federation
        strategy = federation.strategy.name
        individual = STRATEGIES[strategy].needs_individual_updates
        if (privacy.secure_aggregation or privacy.central_dp) and individual:
            option = "privacy.secure_aggregation" if privacy.secure_aggregation else "privacy.central_dp"
            raise ValueError(
                f"{option} hides or noises single updates, but federation.strategy {strategy!r} "
                "needs each one; use a mean-based strategy (fedavg, fedavgm, fedadam, ...)"
            )
        if privacy.dp and self.evaluation.personalization == "ditto":
            raise ValueError(
                "evaluation.personalization ditto trains a personal model on the silo's rows every round, "
                "outside privacy.dp's budget: use finetune (under DP a silo keeps the global model)"
            )
        if strategy == "scaffold" and (privacy.dp or self.model.lora):
            option = "privacy.dp" if privacy.dp else "model.lora"
            raise ValueError(
                f"federation.strategy scaffold corrects each plain SGD step's gradient; {option} trains "
                "otherwise (DP-SGD's noised steps, adapter names): use fedavg or fedprox with it"
            )
        if privacy.secure_aggregation and federation.transfer_dtype != "float32":
            raise ValueError(
                "federation.transfer_dtype has no effect with privacy.secure_aggregation (masked updates "
                "are 32-bit integers); set it to float32"
            )
        if privacy.secure_aggregation and (privacy.secagg_threshold or 0) > len(self.silos):
            raise ValueError(
                f"privacy.secagg_threshold is {privacy.secagg_threshold} but the scenario has "
                f"{len(self.silos)} silos"
            )
        if privacy.secagg_threshold is not None and 2 * privacy.secagg_threshold <= len(self.silos):
            raise ValueError(
                f"privacy.secagg_threshold {privacy.secagg_threshold} is not a strict majority of the "
                f"{len(self.silos)} silos: two halves of a round could then each rebuild one secret of "
                "the same silo and unmask its update; raise it or leave it null"
            )
        if privacy.secure_aggregation and self.min_silos < 2:
            raise ValueError(
                "privacy.secure_aggregation needs at least 2 silos in every round (a sum of one is that "
                "silo's update); set federation.min_silos to 2 or more"
            )
        if privacy.dp and self.evaluation.personalize_steps:
            raise ValueError(
                "privacy.dp and evaluation.personalize_steps: personalized models would train outside "
                "the privacy budget; set evaluation.personalize_steps to 0"
            )
        if privacy.dp and strategy == "fedprox":
            raise ValueError(
                "privacy.dp with federation.strategy 'fedprox': the proximal term has no per-example "
                "gradient for DP-SGD to clip; choose another strategy"
            )

    def sources(self) -> list[SourceSpec]:
        """Every data source the scenario reads: the shared one if used, and per-silo ones."""
        own = [s.data for s in self.silos if s.data is not None]
        shared = [self.data.source] if len(own) < len(self.silos) else []
        return shared + own

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def registered_model_name(self) -> str:
        return self.tracking.registered_model or registered_model_name(self.name)

    @property
    def min_silos(self) -> int:
        return self.federation.min_silos or len(self.silos)

    def silo_names(self) -> list[str]:
        return [s.name for s in self.silos]


def _describe(error: dict[str, Any]) -> str:
    path = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{path}: unknown key; remove it or check its spelling"
    if error["type"] == "missing":
        return f"{path}: required field is missing"
    message = error["msg"].removeprefix("Value error, ")
    if isinstance(error.get("input"), dict | list):  # a whole section: the message says what is wrong
        return f"{path}: {message}"
    shown = repr(error.get("input"))
    return f"{path}: {message} (got {shown if len(shown) <= 80 else shown[:77] + '...'})"


def validate_scenario(raw: Any, source: str = "scenario") -> Scenario:
    """Validate a parsed scenario; raise ScenarioError naming every bad field."""
    if not isinstance(raw, dict):
        raise ScenarioError(source, ["the file must hold a mapping of scenario fields"])
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(e) for e in exc.errors(include_url=False)]
        raise ScenarioError(source, problems) from None


NAMED_RECORDS = {"federation.strategy": "name"}
"""Records a plain value may stand for, with the field it fills: `federation.strategy: fedadam` is
`{name: fedadam}`. In flattened params the record's name is that path itself."""


def _child(node: dict[str, Any], key: str, path: str) -> Any:
    """The mapping under `key` for an override to go into; a plain name that stands for a record
    becomes that record (`--set federation.strategy.beta1=0.95` on `strategy: fedadam`)."""
    child = node.setdefault(key, {})
    if path in NAMED_RECORDS and not isinstance(child, dict | list):
        node[key] = child = {NAMED_RECORDS[path]: child}
    return child


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (3 -> int)."""
    if "=" not in assignment:
        raise ScenarioError("--set", [f"{assignment!r}: expected FIELD.PATH=VALUE"])
    path, _, text = assignment.partition("=")
    keys = path.strip().split(".")
    node: Any = raw
    for depth, key in enumerate(keys[:-1]):
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        elif isinstance(node, dict):
            node = _child(node, key, ".".join(keys[: depth + 1]))
        else:
            raise ScenarioError("--set", [f"{path}: {key!r} does not name a field or list index"])
    last = keys[-1]
    value = yaml.safe_load(text) if text.strip() else None
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ScenarioError("--set", [f"{path}: {last!r} does not name a field or list index"])


MAX_FILE_BYTES = 1_000_000
MAX_VALUES = 100_000  # values a scenario may expand to, YAML aliases followed


def _expands_beyond(node: Any, budget: int) -> bool:
    """Whether `node` holds more than `budget` values once YAML aliases (shared objects) are
    followed: a few lines of nested aliases can expand to billions."""
    stack, seen = [node], 0
    while stack:
        current = stack.pop()
        seen += 1
        if seen > budget:
            return True
        if isinstance(current, dict):
            stack.extend(current.keys())
            stack.extend(current.values())
        elif isinstance(current, list):
            stack.extend(current)
    return False


def read_scenario_file(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a scenario YAML file, turning I/O and syntax errors into ScenarioError."""
    file = Path(path)
    if not file.is_file():
        raise ScenarioError(str(path), ["file not found; scenarios live in scenarios/*.yaml"])
    if file.stat().st_size > MAX_FILE_BYTES:
        raise ScenarioError(
            str(path), [f"file is over {MAX_FILE_BYTES // 1000} kB; a scenario is a short YAML file"]
        )
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(
            str(path), [f"not a UTF-8 text file (byte {exc.start}); a scenario is YAML text"]
        ) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = f"{where}not valid YAML ({getattr(exc, 'problem', exc)})"
        raise ScenarioError(str(path), [problem]) from None
    if _expands_beyond(raw, MAX_VALUES):
        raise ScenarioError(
            str(path), [f"expands to over {MAX_VALUES} values (nested YAML aliases?); write it out plainly"]
        )
    return raw if raw is not None else {}


def _overridden(raw: Any, source: str, overrides: list[str], rounds: int | None) -> Scenario:
    if isinstance(raw, dict):
        for assignment in overrides:
            apply_override(raw, assignment)
        if rounds is not None:
            apply_override(raw, f"federation.rounds={rounds}")
    return validate_scenario(raw, source)


def load_scenario(path: str | os.PathLike, overrides: list[str] = (), rounds: int | None = None) -> Scenario:
    """Read, override and validate a scenario file."""
    return _overridden(read_scenario_file(path), str(path), overrides, rounds)


def load_scenario_text(
    text: str, source: str, overrides: list[str] = (), rounds: int | None = None
) -> Scenario:
    """Validate a scenario held as YAML text (e.g. the one recorded with an MLflow job)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(source, [f"not valid YAML ({exc})"]) from None
    return _overridden(raw if raw is not None else {}, source, overrides, rounds)


def changed_fields(before: Scenario, after: Scenario) -> list[tuple[str, str, str]]:
    """(field, before, after) for every setting that differs; labels settled from data are ignored."""
    old, new = flatten(before), flatten(after)
    keys = sorted((set(old) | set(new)) - {"data.labels"})
    return [(k, old.get(k, ""), new.get(k, "")) for k in keys if old.get(k) != new.get(k)]


def flatten(scenario: Scenario) -> dict[str, str]:
    """The scenario as dotted keys, for MLflow params: the `--set` paths. A named record's name
    keeps its own path (`federation.strategy`: fedadam; `federation.strategy.beta1`: 0.9)."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                walk(f"{prefix}.{key}" if prefix else key, child)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for index, child in enumerate(value):
                walk(f"{prefix}.{index}", child)
        else:
            flat[prefix] = str(value)

    walk("", scenario.model_dump(mode="json"))
    for path, field in NAMED_RECORDS.items():
        flat[path] = flat.pop(f"{path}.{field}")
    return flat
