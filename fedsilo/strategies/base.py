"""The Strategy interface: what the coordinator asks of a federated optimisation algorithm.

A strategy configures each silo's fit (the settings it sends, e.g. FedProx's mu) and aggregates
the updates it receives into the next global model. State it keeps across rounds (momentum, Adam
moments) is exposed as tensors, saved with each round's global model, so a job can resume.
Wrappers that cut across strategies (clipping, noise, masking) wrap one rather than inherit.

Each strategy's settings are one pydantic record (`StrategySettings`) written beside its class:
the record's fields, defaults and limits are the strategy's constructor keywords, the scenario's
`federation.strategy` and the Prefect run form's fields, so a default is written in one place.
"""

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from fedsilo.weights import State


@dataclass(frozen=True)
class SiloUpdate:
    """One silo's weights after local training and the number of examples it trained on."""

    silo: str
    state: State
    num_examples: int
    scale: float = 1.0  # the factor its change was clipped by before it reached the strategy


@dataclass(frozen=True)
class RunFacts:
    """What a strategy may need of the job beyond its settings: the federation's size and each
    silo's local training (steps per round, from `local_steps` or its training count's batches)."""

    silos: int
    learning_rate: float
    local_steps: int | None
    epochs: int
    batch_size: int
    trained_on: dict[str, int]

    def steps_of(self, silo: str) -> int:
        """The optimizer steps a silo takes per round, as the scenario and its count at prepare say."""
        if self.local_steps:
            return self.local_steps
        return max(1, -(-self.trained_on.get(silo, 1) // self.batch_size) * self.epochs)


class StrategySettings(BaseModel):
    """A strategy's settings record: `name` (a Literal with a default in each concrete record)
    says which strategy, the other fields are its constructor keywords."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # .inf or .nan is never a setting

    name: str

    @classmethod
    def strategy_name(cls) -> str:
        """The name this record stands for (the default of its `name` field)."""
        return cls.model_fields["name"].default

    @classmethod
    def options(cls) -> tuple[str, ...]:
        """The settings a scenario may give this strategy (every field but `name`)."""
        return tuple(f for f in cls.model_fields if f != "name")

    def keywords(self) -> dict[str, Any]:
        """The settings as the strategy's constructor keywords."""
        return self.model_dump(exclude={"name"})

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        """Title each record by its strategy name: the run form's drop-down shows 'fedadam'."""
        schema = handler(core_schema)
        name = cls.model_fields["name"].default
        if isinstance(name, str):
            handler.resolve_ref_schema(schema)["title"] = name
        return schema


class Strategy(ABC):
    """One federated algorithm. Subclasses set `Settings` (their record; its name is the
    strategy's `name`) and implement `aggregate`; the constructor takes the record's fields as
    keywords and keeps the checked record as `self.settings`."""

    Settings: ClassVar[type[StrategySettings]]
    name: ClassVar[str]
    # True when aggregation needs each silo's update (median): secure aggregation and central DP,
    # which reveal only a (noised) weighted mean, cannot serve such a strategy.
    needs_individual_updates: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Settings" in vars(cls):  # the name is written once, in the record
            cls.name = cls.Settings.strategy_name()

    def __init__(self, **settings: Any) -> None:
        """Check `settings` against the record: a bad value raises a ValueError naming the field."""
        self.settings = self.Settings(**settings)

    def bind(self, facts: RunFacts) -> None:  # noqa: B027 - a hook most strategies leave empty
        """Learn the job's facts once its silos have described their data (nothing by default)."""

    def configure_fit(self, round_index: int) -> dict[str, float]:
        """Settings every silo's local training receives this round (none by default)."""
        return {}

    def fit_tensors(self) -> State:
        """Tensors every silo's fit receives this round beside the global model (none by default)."""
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
