"""FedAvg as a server optimizer over plain tensors.

The kernel is a running weighted sum: sum_k n_k w_k and sum_k n_k, added one silo at a time,
so the coordinator holds one model's worth of accumulators however many silos answer. The
strategy then treats avg - w as a pseudo-gradient and takes a server step:

    fedavg   w <- w + lr * (avg - w)          (lr = 1 gives exactly w = sum n_k w_k / sum n_k)
    fedavgm  v <- m v + (avg - w);  w <- w + lr * v

Floating tensors are accumulated in float32 (or float64 if they already are) and cast back.
Integer and bool tensors (BatchNorm's num_batches_tracked, BERT's position_ids) are counters or
constants, never averaged: the global value is the element-wise maximum over silos.
"""

import torch

from fedsilo.weights import State


def _accumulator_dtype(tensor: torch.Tensor) -> torch.dtype:
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


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
                self._sums[name] = tensor.to(_accumulator_dtype(tensor), copy=True).mul_(num_examples)
            else:  # in place: no temporary the size of the model per silo
                held.add_(tensor, alpha=num_examples)
            self._dtypes[name] = tensor.dtype
        self.total_examples += num_examples
        self.count += 1

    def mean(self) -> State:
        """The weighted average, in each tensor's own dtype."""
        if not self.count:
            raise ValueError("no silo update was added")
        return {
            name: (acc / self.total_examples if acc.is_floating_point() else acc).to(self._dtypes[name])
            for name, acc in self._sums.items()
        }


class FedAvg:
    """Server SGD on the averaged update; learning rate 1 is McMahan et al.'s FedAvg."""

    def __init__(self, server_learning_rate: float = 1.0) -> None:
        self.server_learning_rate = server_learning_rate

    def _direction(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        return delta

    def apply(self, current: State, average: State) -> State:
        """The next global model from the current one and the silos' weighted average."""
        updated: State = {}
        for name, target in average.items():
            if not target.is_floating_point():
                updated[name] = target
                continue
            base = current[name].to(_accumulator_dtype(target))
            step = self._direction(name, target.to(base.dtype) - base)
            updated[name] = torch.add(base, step, alpha=self.server_learning_rate).to(target.dtype)
        return updated


class FedAvgM(FedAvg):
    """FedAvg with server momentum (Hsu et al. 2019): v <- m v + delta, w <- w + lr v."""

    def __init__(self, server_learning_rate: float = 1.0, server_momentum: float = 0.9) -> None:
        super().__init__(server_learning_rate)
        self.server_momentum = server_momentum
        self._velocity: State = {}

    def _direction(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        previous = self._velocity.get(name)
        velocity = delta if previous is None else self.server_momentum * previous + delta
        self._velocity[name] = velocity
        return velocity


STRATEGIES = {"fedavg": FedAvg, "fedavgm": FedAvgM}


def make_strategy(name: str, server_learning_rate: float, server_momentum: float) -> FedAvg:
    """The strategy a scenario names (a closed list)."""
    if name == "fedavgm":
        return FedAvgM(server_learning_rate, server_momentum)
    if name == "fedavg":
        return FedAvg(server_learning_rate)
    raise ValueError(f"federation.strategy: unknown strategy {name!r}; choose from {sorted(STRATEGIES)}")
