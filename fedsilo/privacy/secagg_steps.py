"""The three steps secure aggregation asks of silos after fit, as values (JSON on the wire).

    ShareKeys  round r, every peer's key bundle, the encoding, the threshold
               -> SharedKeys: sealed shares at `JobPaths.shares_uri(r, silo)`, a seed digest
    Mask       round r, the view's digest, the bundles of the peers that shared
               -> MaskedUpdate: the masked vector at `JobPaths.masked_uri(r, 0, silo)`
    Unmask     round r, the view's digest, the survivors (their vectors arrived) and the dropped
               -> RevealedShares: shares of the survivors' seeds and of the dropped masking keys
The silo side is fedsilo.privacy.secagg_silo; the coordinator's is fedsilo.privacy.secure_aggregation.
"""

from dataclasses import dataclass
from typing import ClassVar

from fedsilo.messages import MaskedUpdate, RevealedShares, SharedKeys, WeightRef
from fedsilo.steps import Step


@dataclass(frozen=True)
class ShareKeys(Step):
    """Seal shares of a fresh self-mask seed and of the masking key for each of `peers` (silo ->
    key bundle, this silo included), given the round's `encoding` and `threshold`."""

    round_index: int
    peers: dict[str, str]
    encoding: dict[str, float]
    threshold: int
    exchange: str
    kind: ClassVar[str] = "secagg-share"
    reply: ClassVar[type] = SharedKeys

    @property
    def label(self) -> str:
        return f"share-round-{self.round_index}"

    def task_name(self, silo: str) -> str:
        return f"share-{silo}-round-{self.round_index}"


@dataclass(frozen=True)
class Mask(Step):
    """Mask the update kept at fit with a self mask and pairwise masks with the peers whose
    sealed shares are in `bundles`, and write the masked vector under `exchange`."""

    round_index: int
    digest: str
    bundles: dict[str, WeightRef]
    exchange: str
    kind: ClassVar[str] = "mask"
    reply: ClassVar[type] = MaskedUpdate

    @property
    def label(self) -> str:  # a silo masks once per round: attempt 0, kept for logs that name it
        return f"mask-round-{self.round_index}-attempt-0"

    def task_name(self, silo: str) -> str:
        return f"mask-{silo}-round-{self.round_index}-attempt-0"


@dataclass(frozen=True)
class Unmask(Step):
    """Reveal shares: of each survivor's seed, and of each dropped peer's masking key."""

    round_index: int
    digest: str
    survivors: list[str]
    dropped: list[str]
    exchange: str
    kind: ClassVar[str] = "secagg-unmask"
    reply: ClassVar[type] = RevealedShares

    @property
    def label(self) -> str:
        return f"unmask-round-{self.round_index}"

    def task_name(self, silo: str) -> str:
        return f"unmask-{silo}-round-{self.round_index}"
