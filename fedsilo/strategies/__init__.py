"""Federated strategies behind one interface, and the closed registry scenarios name them from.

Add one: subclass `Strategy` (or `FedAvg` to change only the server step), give it a `name` and
the scenario `fields` it reads, and `register_strategy` it. See "Add a strategy" in the README.
"""

from fedsilo.strategies.adaptive import FedAdagrad, FedAdam, FedYogi
from fedsilo.strategies.base import SiloUpdate, Strategy
from fedsilo.strategies.mean import FedAvg, FedAvgM, FedProx, WeightedSum, weighted_mean
from fedsilo.strategies.robust import Median, TrimmedMean

STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Make `cls` available as `federation.strategy: <cls.name>` (usable as a class decorator)."""
    existing = STRATEGIES.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"strategy name {cls.name!r} is taken by {existing.__name__}")
    STRATEGIES[cls.name] = cls
    return cls


for _builtin in (FedAvg, FedAvgM, FedProx, FedAdam, FedYogi, FedAdagrad, Median, TrimmedMean):
    register_strategy(_builtin)


def make_strategy(federation) -> Strategy:
    """The strategy `federation.strategy` names, built from the `federation.<field>`s it reads
    (fields left empty take the strategy's own defaults)."""
    cls = STRATEGIES.get(federation.strategy)
    if cls is None:
        raise ValueError(
            f"federation.strategy: unknown strategy {federation.strategy!r}; choose from {sorted(STRATEGIES)}"
        )
    settings = {f: getattr(federation, f) for f in cls.fields if getattr(federation, f, None) is not None}
    return cls(**settings)


__all__ = [
    "STRATEGIES",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedProx",
    "FedYogi",
    "Median",
    "SiloUpdate",
    "Strategy",
    "TrimmedMean",
    "WeightedSum",
    "make_strategy",
    "register_strategy",
    "weighted_mean",
]
