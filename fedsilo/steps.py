"""What a coordinator asks of a silo, as values: one small record per step, no torch.

Each step names the record its silo answers with (`reply`) and the name its work carries in
Prefect (`task_name`, e.g. `fit-clinic-a-round-3`); `fedsilo.handler.handle` is the silo side that
answers it. Steps travel as JSON (`dump_step` / `load_step`), so a silo's worker in another
process reads exactly what an in-process silo is given.

Add a step: subclass `Step` (a frozen dataclass with a unique `kind`), register its silo handler
with `fedsilo.handler.handles`, and add the coordinator line that asks it (README "Architecture").
"""

from dataclasses import dataclass, field
from typing import Any, ClassVar

from fedsilo.errors import UnknownKind
from fedsilo.messages import DataSummary, Evaluation, FitReport, Kept, Scores, WeightRef, adapter

STEP_KINDS: dict[str, type["Step"]] = {}


@dataclass(frozen=True)
class Step:
    """One thing a silo is asked to do. Subclasses set `kind` and `reply`."""

    kind: ClassVar[str] = ""
    reply: ClassVar[type] = object
    # True: the scenario's silo_retries and silo_timeout_seconds apply (long local training)
    retried: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.kind:
            return
        existing = STEP_KINDS.get(cls.kind)
        if existing is not None and _origin(existing) != _origin(cls):
            raise ValueError(
                f"step kind {cls.kind!r} is taken by {existing.__module__}.{existing.__qualname__}"
            )
        STEP_KINDS[cls.kind] = cls

    @property
    def label(self) -> str:
        """The step's name in logs and on the wire, e.g. `fit-round-3` or `round-0`."""
        return self.kind

    def task_name(self, silo: str) -> str:
        """The name of this silo's work on the step in Prefect (task runs users see)."""
        return f"{self.kind}-{silo}"


@dataclass(frozen=True)
class Prepare(Step):
    """Load and split the silo's data; answer its counts and label distribution, never rows."""

    kind: ClassVar[str] = "prepare"
    reply: ClassVar[type] = DataSummary


@dataclass(frozen=True)
class Fit(Step):
    """Train from the global `weights` with the strategy's `config`; the update goes to the
    silo's own file under `exchange` (see fedsilo.paths.JobPaths.update_uri)."""

    round_index: int
    weights: WeightRef
    exchange: str
    config: dict[str, float] = field(default_factory=dict)
    extra: WeightRef | None = None  # the strategy's tensors for every silo (SCAFFOLD's c)
    kind: ClassVar[str] = "fit"
    reply: ClassVar[type] = FitReport
    retried: ClassVar[bool] = True

    @property
    def label(self) -> str:
        return f"fit-round-{self.round_index}"

    def task_name(self, silo: str) -> str:
        return f"fit-{silo}-round-{self.round_index}"


@dataclass(frozen=True)
class Evaluate(Step):
    """Score `weights` on the silo's test split; `name` says which model (`round-3`, `champion`).
    With `validation`, also on its validation rows (the counts only, to choose the best round)."""

    weights: WeightRef
    name: str
    exchange: str = ""  # the job's folder: under DP-SGD a silo scores only this job's models
    validation: bool = False
    kind: ClassVar[str] = "evaluate"
    reply: ClassVar[type] = Evaluation

    @property
    def label(self) -> str:
        return self.name

    def task_name(self, silo: str) -> str:
        return f"evaluate-{silo}-{self.name}"


@dataclass(frozen=True)
class Score(Step):
    """Score several named models on the silo's test split in one step (a silo x silo column)."""

    models: dict[str, WeightRef]
    name: str
    exchange: str = ""  # the job's folder (see Evaluate)
    kind: ClassVar[str] = "score"
    reply: ClassVar[type] = Scores

    @property
    def label(self) -> str:
        return f"score-{self.name}"

    def task_name(self, silo: str) -> str:
        return f"score-{silo}-{self.name}"


@dataclass(frozen=True)
class Keep(Step):
    """After the last round: score the final global model, a personalized one (`personalize_steps`
    fine-tuning) and the silo's alone model (the starting model trained on its rows alone for
    `rounds` rounds' steps) on the silo's validation rows, and keep the best (fedsilo.keeping)."""

    weights: WeightRef
    personalize_steps: int
    rounds: int
    exchange: str = ""  # the job's folder: the silo's personal layers for it go in
    kind: ClassVar[str] = "keep"
    reply: ClassVar[type] = Kept
    retried: ClassVar[bool] = True


def _origin(cls: type) -> tuple[str, str]:
    """Where a step class is defined; one module imported under two names (a test module imported
    by pytest and by another test) counts as one place."""
    return cls.__module__.rsplit(".", 1)[-1], cls.__qualname__


def dump_step(step: Step) -> dict[str, Any]:
    """The step as JSON-ready values, with its `kind`."""
    return {"kind": step.kind, **adapter(type(step)).dump_python(step, mode="json")}


def load_step(data: dict[str, Any]) -> Step:
    """Read back what `dump_step` wrote; an unknown kind is an error naming the known ones."""
    values = dict(data)
    kind = values.pop("kind", None)
    cls = STEP_KINDS.get(kind)
    if cls is None:
        raise UnknownKind("step", kind, list(STEP_KINDS))
    return adapter(cls).validate_python(values)


__all__ = [
    "STEP_KINDS",
    "Evaluate",
    "Fit",
    "Keep",
    "Prepare",
    "Score",
    "Step",
    "dump_step",
    "load_step",
]
