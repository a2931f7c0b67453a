"""FedAvg as a server optimizer, and the strategies that only change its server step.

The weighted mean is a running sum, sum_k n_k w_k and sum_k n_k, added one silo at a time, so the
coordinator holds one model's worth of accumulators however many silos answer. The averaged
update minus the current model is a pseudo-gradient `delta`; the server step is then

    fedavg / fedprox   w <- w + lr * delta                  (lr = 1: w = sum n_k w_k / sum n_k)
    fedavgm            v <- m v + delta;  w <- w + lr * v

Floating tensors are accumulated in float32 (float64 stays float64) and cast back. Integer and
bool tensors (BatchNorm's num_batches_tracked, BERT's position_ids) are counters or constants,
never averaged: the global value is the element-wise maximum over silos.
"""

from collections.abc import Iterable
from typing import Any, Literal

import torch
from pydantic import Field

from fedsilo.strategies.base import SiloUpdate, Strategy, StrategySettings, accumulator_dtype
from fedsilo.weights import State


class WeightedSum:
    """Running sum_k n_k w_k over silo updates; `mean()` is the FedAvg average."""

    def __init__(self) -> None:
        self._sums: State = {}
        self._dtypes: dict[str, torch.dtype] = {}
        self.total_examples = 0
        self.count = 0

    def add(self, state: State, num_examples: int) -> None:
        if num_examples <= 0:
            raise ValueError(f"num_examples must be positive, got {num_examples}")
        if self._sums and set(state) != set(self._sums):
            raise ValueError(f"update has tensors {sorted(set(state) ^ set(self._sums))[:5]} that differ")
        for name, tensor in state.items():
            held = self._sums.get(name)
            if not tensor.is_floating_point():
                self._sums[name] = tensor.clone() if held is None else torch.maximum(held, tensor)
            elif held is None:
                self._sums[name] = tensor.to(accumulator_dtype(tensor), copy=True).mul_(num_examples)
            else:  # in place: no temporary the size of the model per silo
                held.add_(tensor, alpha=num_examples)
            self._dtypes[name] = tensor.dtype
        self.total_examples += num_examples
        self.count += 1

    @property
    def tensors_held(self) -> int:
        """How many accumulator tensors the sum holds: one per model tensor, however many silos."""
        return len(self._sums)

    def mean(self) -> State:
        """The weighted average, in each tensor's own dtype."""
        if not self.count:
            raise ValueError("no silo update was added")
        return {
            name: (acc / self.total_examples if acc.is_floating_point() else acc).to(self._dtypes[name])
            for name, acc in self._sums.items()
        }


def weighted_mean(updates: Iterable[SiloUpdate]) -> State:
    """sum_k n_k w_k / sum_k n_k over the updates, reading each once."""
    total = WeightedSum()
    for update in updates:
        total.add(update.state, update.num_examples)
    return total.mean()


class ServerStepSettings(StrategySettings):
    """Settings of every strategy with a server step on the averaged update."""

    server_learning_rate: float = Field(1.0, gt=0, description="server step size: w + lr * step")


class FedAvgSettings(ServerStepSettings):
    """fedavg: the weighted mean of the silos' models (server SGD; lr 1 is exactly the mean)."""

    name: Literal["fedavg"] = "fedavg"


class FedAvg(Strategy):
    """Server SGD on the averaged update; learning rate 1 is McMahan et al.'s FedAvg."""

    Settings = FedAvgSettings
    settings: ServerStepSettings

    def aggregate(self, current: State, updates: Iterable[SiloUpdate]) -> State:
        return self.apply(current, weighted_mean(updates))

    def direction(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        """The server step's direction for one tensor, from its pseudo-gradient (plain SGD here)."""
        return delta

    def apply(self, current: State, average: State) -> State:
        """The next global model from the current one and the silos' weighted average."""
        updated: State = {}
        for name, target in average.items():
            if not target.is_floating_point():
                updated[name] = target
                continue
            base = current[name].to(accumulator_dtype(target))
            step = self.direction(name, target.to(base.dtype) - base)
            updated[name] = torch.add(base, step, alpha=self.settings.server_learning_rate).to(target.dtype)
        return updated


class FedAvgMSettings(ServerStepSettings):
    """fedavgm: FedAvg with server momentum, v = m v + delta; w + lr * v (Hsu et al. 2019)."""

    name: Literal["fedavgm"] = "fedavgm"
    server_momentum: float = Field(0.9, ge=0, lt=1, description="momentum m of the server step")


class FedAvgM(FedAvg):
    """FedAvg with server momentum (Hsu et al. 2019): v <- m v + delta, w <- w + lr v."""

    Settings = FedAvgMSettings
    settings: FedAvgMSettings

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.velocity: State = {}

    def direction(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        previous = self.velocity.get(name)
        velocity = delta if previous is None else self.settings.server_momentum * previous + delta
        self.velocity[name] = velocity
        return velocity

    def state_dict(self) -> State:
        return {f"velocity/{name}": v for name, v in self.velocity.items()}

    def load_state_dict(self, state: State) -> None:
        self.velocity = {key.removeprefix("velocity/"): v for key, v in state.items()}


class FedProxSettings(ServerStepSettings):
    """fedprox: FedAvg whose silos add mu/2 ||w - w_global||^2 to their loss (Li et al. 2020)."""

    name: Literal["fedprox"] = "fedprox"
    proximal_mu: float = Field(
        0.01, ge=0, description="weight mu of the proximal term mu/2 ||w - w_global||^2; 0 is FedAvg"
    )


class FedProx(FedAvg):
    """FedAvg whose silos add mu/2 * ||w - w_global||^2 to their local loss (Li et al. 2020).

    The proximal term keeps a skewed silo's local model near the global one; mu = 0 is FedAvg.
    """

    Settings = FedProxSettings
    settings: FedProxSettings

    def configure_fit(self, round_index: int) -> dict[str, float]:
        return {"proximal_mu": self.settings.proximal_mu}
