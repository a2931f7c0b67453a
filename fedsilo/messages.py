"""The records that cross between silos and coordinator: small, JSON-serialisable, no torch.

Silos answer with these (never tensors, never rows): a reference to weights in the shared store,
label counts, confusion matrices. `fedsilo compare`, the tracker and the Prefect adapters import
them without importing torch or transformers.
"""

import json
from dataclasses import dataclass, field
from functools import cache
from typing import TypeVar

from pydantic import TypeAdapter


@dataclass(frozen=True)
class WeightRef:
    """Weights at a URI of the shared store, with the sha256 the receiver verifies and their size."""

    uri: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Evaluation:
    """A model's metrics on one silo's test split."""

    silo: str
    accuracy: float
    f1_macro: float
    loss: float
    confusion: list[list[int]]  # rows: true label, columns: predicted; counts only, never rows
    validation: list[list[int]] | None = None  # the same on the silo's validation rows, when asked


KEPT_CHOICES = ("global", "personalized", "alone")  # the candidates a silo may keep


@dataclass(frozen=True)
class Kept:
    """The model a silo keeps after the job, and what it would have had alone. Only the choice and
    scores leave the silo: `validation` holds each candidate's score (evaluation.metric) on its
    validation rows (global, personalized, alone), `kept` the best of them, `kept_evaluation` that
    model on its test split, `alone` and `personalized` those candidates there (None when it
    trained none: `note` says why)."""

    silo: str
    kept: str
    validation: dict[str, float]
    kept_evaluation: Evaluation
    alone: Evaluation | None = None
    alone_reused: bool = False
    note: str = ""
    personalized: Evaluation | None = None  # the personalized candidate on its test split


@dataclass(frozen=True)
class Scores:
    """One silo's evaluations of several models on its test split, by model name: its column of
    the silo x silo matrix, in one step instead of one per model."""

    silo: str
    models: dict[str, Evaluation]


@dataclass(frozen=True)
class FitReport:
    """What a silo sends back after local training: a weight reference, never the tensors.

    Under secure aggregation `update` is None and `public_key` is the silo's key for the round's
    masking step (its masked update follows as a `MaskedUpdate`). A silo that declines the round
    (its privacy budget is spent) says why in `refused`, with no update.
    """

    silo: str
    round: int
    update: WeightRef | None
    num_examples: int
    train_loss: float
    local: Evaluation | None
    seconds: float
    steps: int = 0  # optimizer steps taken this round
    epsilon: float | None = None  # DP-SGD: the silo's epsilon spent so far in this job
    public_key: str = ""  # secure aggregation: its two X25519 public keys (masking, sealing), 128 hex
    clipped: int = 0  # secure aggregation: coordinates of the update clipped to the range
    refused: str = ""
    update_norm: float = 0.0  # secure aggregation, no fixed bound: its change's L2 norm (sets the round's)


@dataclass(frozen=True)
class MaskedUpdate:
    """A silo's update under secure aggregation: a ring vector that only sums to something."""

    silo: str
    round: int
    attempt: int
    vector: WeightRef


@dataclass(frozen=True)
class SharedKeys:
    """A silo's answer to secure aggregation's share step: its shares of its secrets, one sealed
    for each peer, in a bundle at the URI derived for it (the coordinator cannot open them), and
    a digest of its self-mask seed, to check the seed the survivors' shares rebuild."""

    silo: str
    round: int
    bundle: WeightRef
    seed_digest: str


@dataclass(frozen=True)
class RevealedShares:
    """A surviving silo's answer to secure aggregation's unmask step, as hex: its share of each
    surviving peer's self-mask seed and of each dropped peer's masking key, never both for one."""

    silo: str
    round: int
    seeds: dict[str, str]
    mask_keys: dict[str, str]


@dataclass(frozen=True)
class DataSummary:
    """Counts and label distribution of a silo's data, never its rows; images also give their shape."""

    silo: str
    train_counts: dict[str, int] = field(default_factory=dict)
    test_counts: dict[str, int] = field(default_factory=dict)
    input_shape: tuple[int, ...] = ()
    version: str = ""  # sha256 of the rows: changes exactly when the silo's data changes

    @property
    def num_train(self) -> int:
        return sum(self.train_counts.values())


Reply = TypeVar("Reply", DataSummary, FitReport, Evaluation, MaskedUpdate, Scores, SharedKeys, RevealedShares)


def dump_reply(
    reply: DataSummary | FitReport | Evaluation | MaskedUpdate | Scores | SharedKeys | RevealedShares,
) -> bytes:
    """A silo's answer as JSON (NaN written as NaN: a DP-SGD silo sends its loss as NaN)."""
    return json.dumps(adapter(type(reply)).dump_python(reply), allow_nan=True).encode()


def load_reply(kind: type[Reply], payload: bytes) -> Reply:
    """Read back what `dump_reply` wrote; ValueError (pydantic's ValidationError among them) when
    it is not JSON of a `kind`."""
    return adapter(kind).validate_python(json.loads(payload))


@cache
def adapter(kind: type) -> TypeAdapter:
    """pydantic's adapter for a record type, built once (building one costs about half a ms)."""
    return TypeAdapter(kind)
