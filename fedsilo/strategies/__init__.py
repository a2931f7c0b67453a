"""Federated strategies behind one interface, and the closed registry scenarios name them from.

Add one: subclass `Strategy` (or `FedAvg` to change only the server step), give it a settings
record as `Settings` (a `StrategySettings`, or `ServerStepSettings` under FedAvg, whose `name` is
a Literal with that default, and one field per setting with its default and limits), and
`register_strategy` it. See "Add a strategy" in the README.
"""

from typing import Annotated, Any, Union

from pydantic import Field

from fedsilo.errors import UnknownKind
from fedsilo.strategies.adaptive import (
    FedAdagrad,
    FedAdagradSettings,
    FedAdam,
    FedAdamSettings,
    FedYogi,
    FedYogiSettings,
)
from fedsilo.strategies.base import RunFacts, SiloUpdate, Strategy, StrategySettings
from fedsilo.strategies.mean import (
    FedAvg,
    FedAvgM,
    FedAvgMSettings,
    FedAvgSettings,
    FedProx,
    FedProxSettings,
    ServerStepSettings,
    WeightedSum,
    weighted_mean,
)
from fedsilo.strategies.robust import Median, MedianSettings, TrimmedMean, TrimmedMeanSettings
from fedsilo.strategies.scaffold import Scaffold, ScaffoldSettings

STRATEGIES: dict[str, type[Strategy]] = {}

BUILTIN = (FedAvg, FedAvgM, FedProx, FedAdam, FedYogi, FedAdagrad, Median, TrimmedMean, Scaffold)

BuiltinSettings = Annotated[
    Union[tuple(cls.Settings for cls in BUILTIN)],  # noqa: UP007 - built from a tuple
    Field(discriminator="name"),
]
"""The settings record of any built-in strategy, told apart by `name`: the run form's schema."""


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Make `cls` available as `federation.strategy: <cls.name>` (usable as a class decorator)."""
    record = cls.__dict__.get("Settings")
    if record is None or not issubclass(record, StrategySettings):
        raise ValueError(
            f"{cls.__name__} needs its own settings record: `Settings = ...`, a StrategySettings "
            f"subclass with `name: Literal['{getattr(cls, 'name', '...')}']` and a field per setting"
        )
    if not isinstance(record.strategy_name(), str):
        raise ValueError(f"{record.__name__}.name needs a default: the strategy's name")
    existing = STRATEGIES.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"strategy name {cls.name!r} is taken by {existing.__name__}")
    STRATEGIES[cls.name] = cls
    return cls


for _builtin in BUILTIN:
    register_strategy(_builtin)


def strategy_class(name: str) -> type[Strategy]:
    """The registered strategy called `name`; UnknownKind names the accepted ones."""
    cls = STRATEGIES.get(name)
    if cls is None:
        raise UnknownKind("strategy", name, list(STRATEGIES))
    return cls


def strategy_options() -> dict[str, tuple[str, ...]]:
    """Each registered strategy's settings, by name."""
    return {name: cls.Settings.options() for name, cls in STRATEGIES.items()}


def make_strategy(federation: Any) -> Strategy:
    """The strategy `federation.strategy` names, built from its settings record."""
    record = federation.strategy
    return strategy_class(record.name)(**record.keywords())


__all__ = [
    "BUILTIN",
    "STRATEGIES",
    "BuiltinSettings",
    "FedAdagrad",
    "FedAdagradSettings",
    "FedAdam",
    "FedAdamSettings",
    "FedAvg",
    "FedAvgM",
    "FedAvgMSettings",
    "FedAvgSettings",
    "FedProx",
    "FedProxSettings",
    "FedYogi",
    "FedYogiSettings",
    "Median",
    "MedianSettings",
    "RunFacts",
    "Scaffold",
    "ScaffoldSettings",
    "ServerStepSettings",
    "SiloUpdate",
    "Strategy",
    "StrategySettings",
    "TrimmedMean",
    "TrimmedMeanSettings",
    "WeightedSum",
    "make_strategy",
    "register_strategy",
    "strategy_class",
    "strategy_options",
    "weighted_mean",
]
