"""Adaptive server optimizers of Reddi et al. 2021, "Adaptive Federated Optimization".

With delta = weighted mean of the updates - w (the pseudo-gradient), per coordinate:

    m <- beta1 m + (1 - beta1) delta
    fedadagrad  v <- v + delta^2
    fedadam     v <- beta2 v + (1 - beta2) delta^2
    fedyogi     v <- v - (1 - beta2) delta^2 sign(v - delta^2)
    w <- w + lr * m / (sqrt(v) + tau)

m starts at 0 and v at tau^2 (the paper's v_{-1} >= tau^2); there is no bias correction, as in
the paper. Each step moves a coordinate by about lr whatever the update's scale, so the server
learning rate is far below FedAvg's 1 (default 0.01) and tau sets how small a delta still counts.
"""

import torch

from fedsilo.strategies.base import check_unit_interval
from fedsilo.strategies.mean import FedAvg
from fedsilo.weights import State


class _AdaptiveServer(FedAvg):
    fields = ("server_learning_rate", "beta1", "beta2", "tau")

    def __init__(
        self, server_learning_rate: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
    ) -> None:
        super().__init__(server_learning_rate)
        self.beta1 = check_unit_interval("beta1", beta1)
        self.beta2 = check_unit_interval("beta2", beta2)
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau!r}")
        self.tau = tau
        self.m: State = {}
        self.v: State = {}

    def second_moment(self, v: torch.Tensor, delta_squared: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def direction(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        m = self.m.get(name, torch.zeros_like(delta))
        v = self.v.get(name, torch.full_like(delta, self.tau**2))
        self.m[name] = m = self.beta1 * m + (1 - self.beta1) * delta
        self.v[name] = v = self.second_moment(v, delta * delta)
        return m / (v.sqrt() + self.tau)

    def state_dict(self) -> State:
        return {f"m/{k}": t for k, t in self.m.items()} | {f"v/{k}": t for k, t in self.v.items()}

    def load_state_dict(self, state: State) -> None:
        self.m = {k[2:]: t for k, t in state.items() if k.startswith("m/")}
        self.v = {k[2:]: t for k, t in state.items() if k.startswith("v/")}


class FedAdagrad(_AdaptiveServer):
    """Server Adagrad: v accumulates every squared pseudo-gradient (beta2 is not used)."""

    name = "fedadagrad"
    fields = ("server_learning_rate", "beta1", "tau")

    def second_moment(self, v: torch.Tensor, delta_squared: torch.Tensor) -> torch.Tensor:
        return v + delta_squared


class FedAdam(_AdaptiveServer):
    """Server Adam: v is an exponential average of squared pseudo-gradients."""

    name = "fedadam"

    def second_moment(self, v: torch.Tensor, delta_squared: torch.Tensor) -> torch.Tensor:
        return self.beta2 * v + (1 - self.beta2) * delta_squared


class FedYogi(_AdaptiveServer):
    """Server Yogi: v moves toward delta^2 additively, so it grows and shrinks more gently than Adam's."""

    name = "fedyogi"

    def second_moment(self, v: torch.Tensor, delta_squared: torch.Tensor) -> torch.Tensor:
        return v - (1 - self.beta2) * delta_squared * torch.sign(v - delta_squared)
