"""Coordinate-wise robust aggregation: the median and the trimmed mean (Yin et al. 2018).

Both hold every update of the round at once (K models) and ignore example counts: a silo that
lies about n_k, or sends extreme values, moves the result no further than an honest silo could.
Integer and bool tensors take the element-wise maximum, as in FedAvg.
"""

from collections.abc import Callable, Iterable
from typing import Literal

import torch
from pydantic import Field

from fedsilo.strategies.base import SiloUpdate, Strategy, StrategySettings, accumulator_dtype
from fedsilo.weights import State


def _coordinatewise(updates: Iterable[SiloUpdate], reduce: Callable[[torch.Tensor], torch.Tensor]) -> State:
    """Apply `reduce` to each float tensor's K values per coordinate, sorted along dim 0; integer
    and bool tensors take the maximum."""
    states = [u.state for u in updates]
    if not states:
        raise ValueError("no silo update was added")
    result: State = {}
    for name in states[0]:
        stack = torch.stack([s[name] for s in states])
        if stack.is_floating_point():
            ordered = stack.to(accumulator_dtype(stack)).sort(dim=0).values
            result[name] = reduce(ordered).to(stack.dtype)
        else:
            result[name] = stack.amax(dim=0)
    return result


class MedianSettings(StrategySettings):
    """median: the coordinate-wise median of the silos' weights, ignoring their example counts."""

    name: Literal["median"] = "median"


class Median(Strategy):
    """The coordinate-wise median of the silos' weights (the mean of the two middle values for even K)."""

    Settings = MedianSettings
    needs_individual_updates = True

    def aggregate(self, current: State, updates: Iterable[SiloUpdate]) -> State:
        def middle(ordered: torch.Tensor) -> torch.Tensor:
            k = ordered.shape[0]
            return (ordered[(k - 1) // 2] + ordered[k // 2]) / 2

        return _coordinatewise(updates, middle)


class TrimmedMeanSettings(StrategySettings):
    """trimmed_mean: the coordinate-wise mean after dropping the extremes, ignoring example counts."""

    name: Literal["trimmed_mean"] = "trimmed_mean"
    trim_fraction: float = Field(
        0.2, ge=0, lt=0.5, description="share of values dropped at each end, per coordinate"
    )


class TrimmedMean(Strategy):
    """The coordinate-wise mean after dropping the `trim_fraction` largest and smallest values.

    floor(trim_fraction * K) values go at each end, at most (K - 1) // 2 so one always remains.
    """

    Settings = TrimmedMeanSettings
    settings: TrimmedMeanSettings
    needs_individual_updates = True

    def trimmed(self, k: int) -> int:
        """Values dropped at each end when K = k silos answered."""
        return min(int(self.settings.trim_fraction * k), (k - 1) // 2)

    def aggregate(self, current: State, updates: Iterable[SiloUpdate]) -> State:
        def trimmed_mean(ordered: torch.Tensor) -> torch.Tensor:
            k = ordered.shape[0]
            cut = self.trimmed(k)
            return ordered[cut : k - cut].mean(dim=0)

        return _coordinatewise(updates, trimmed_mean)
