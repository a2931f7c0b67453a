"""The Strategy interface: what the coordinator asks of a federated optimisation algorithm.

A strategy configures each silo's fit (the settings it sends, e.g. FedProx's mu) and aggregates
the updates it receives into the next global model. State it keeps across rounds (momentum, Adam
moments) is exposed as tensors, saved with each round's global model, so a job can resume.
Wrappers that cut across strategies (clipping, noise, masking) wrap one rather than inherit.
"""

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import torch

from fedsilo.weights import State


@dataclass(frozen=True)
class SiloUpdate:
    """One silo's weights after local training and the number of examples it trained on."""

    silo: str
    state: State
    num_examples: int


class Strategy(ABC):
    """One federated algorithm. Subclasses set `name`, list the scenario fields they read in
    `fields` (each a `federation.<field>` that becomes a constructor keyword), and implement
    `aggregate`."""

    name: ClassVar[str]
    fields: ClassVar[tuple[str, ...]] = ()
    # True when aggregation needs each silo's update (median): secure aggregation and central DP,
    # which reveal only a (noised) weighted mean, cannot serve such a strategy.
    needs_individual_updates: ClassVar[bool] = False

    def configure_fit(self, round_index: int) -> dict[str, float]:
        """Settings every silo's local training receives this round (none by default)."""
        return {}

    @abstractmethod
    def aggregate(self, current: State, updates: Iterable[SiloUpdate]) -> State:
        """The next global model from the current one and the round's validated updates.

        `updates` may be a one-pass iterator that reads each silo's file as it is consumed.
        """

    def apply(self, current: State, average: State) -> State:
        """The next global model from the silos' weighted average alone: what secure aggregation
        and central DP reveal. Mean-based strategies implement it; others cannot run with those."""
        raise NotImplementedError(f"strategy {self.name!r} needs each silo's update, not their mean")

    def state_dict(self) -> State:
        """Tensors the strategy carries to the next round (empty when it keeps none)."""
        return {}

    def load_state_dict(self, state: State) -> None:
        """Restore what `state_dict` returned (resuming a job)."""
        if state:
            raise ValueError(f"strategy {self.name!r} keeps no state, got {sorted(state)[:3]}")


def accumulator_dtype(tensor: torch.Tensor) -> torch.dtype:
    """float64 stays float64; every other floating dtype is accumulated in float32."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def check_unit_interval(name: str, value: float, *, closed: bool = False) -> float:
    """A constructor check that names the parameter, scikit-learn style."""
    if not (0 <= value <= 1 if closed else 0 <= value < 1):
        raise ValueError(f"{name} must be in [0, 1{']' if closed else ')'}, got {value!r}")
    return value
