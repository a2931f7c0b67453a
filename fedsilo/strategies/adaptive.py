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

from typing import Any, Literal

import torch
from pydantic import Field

from fedsilo.strategies.mean import FedAvg, ServerStepSettings
from fedsilo.weights import State


class AdaptiveSettings(ServerStepSettings):
    """Settings shared by the adaptive server steps."""

    server_learning_rate: float = Field(
        0.01, gt=0, description="server step size: each step moves a coordinate by about this much"
    )
    beta1: float = Field(0.9, ge=0, lt=1, description="decay of the first moment m")
    tau: float = Field(1e-3, gt=0, description="adaptivity: added to sqrt(v); v starts at tau^2")


class SecondMomentSettings(AdaptiveSettings):
    """Settings of the adaptive steps whose second moment decays (Adam, Yogi)."""

    beta2: float = Field(0.99, ge=0, lt=1, description="decay of the second moment v")


class FedAdagradSettings(AdaptiveSettings):
    """fedadagrad: server Adagrad, v accumulates every squared pseudo-gradient (Reddi et al. 2021)."""

    name: Literal["fedadagrad"] = "fedadagrad"


class FedAdamSettings(SecondMomentSettings):
    """fedadam: server Adam, w + lr * m / (sqrt(v) + tau) (Reddi et al. 2021)."""

    name: Literal["fedadam"] = "fedadam"


class FedYogiSettings(SecondMomentSettings):
    """fedyogi: server Yogi, v moves toward delta^2 additively (Reddi et al. 2021)."""

    name: Literal["fedyogi"] = "fedyogi"


class _AdaptiveServer(FedAvg):
    settings: AdaptiveSettings

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.m: State = {}
        self.v: State = {}

    def second_moment(self, v: torch.Tensor, delta_squared: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def direction(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        beta1, tau = self.settings.beta1, self.settings.tau
        m = self.m.get(name, torch.zeros_like(delta))
        v = self.v.get(name, torch.full_like(delta, tau**2))
        self.m[name] = m = beta1 * m + (1 - beta1) * delta
        self.v[name] = v = self.second_moment(v, delta * delta)
        return m / (v.sqrt() + tau)

    def state_dict(self) -> State:
        return {f"m/{k}": t for k, t in self.m.items()} | {f"v/{k}": t for k, t in self.v.items()}

    def load_state_dict(self, state: State) -> None:
        self.m = {k[2:]: t for k, t in state.items() if k.startswith("m/")}
        self.v = {k[2:]: t for k, t in state.items() if k.startswith("v/")}


class FedAdagrad(_AdaptiveServer):
    """Server Adagrad: v accumulates every squared pseudo-gradient (there is no beta2)."""

    Settings = FedAdagradSettings

    def second_moment(self, v: torch.Tensor, delta_squared: torch.Tensor) -> torch.Tensor:
        return v + delta_squared


class FedAdam(_AdaptiveServer):
    """Server Adam: v is an exponential average of squared pseudo-gradients."""

    Settings = FedAdamSettings
    settings: FedAdamSettings

    def second_moment(self, v: torch.Tensor, delta_squared: torch.Tensor) -> torch.Tensor:
        return self.settings.beta2 * v + (1 - self.settings.beta2) * delta_squared


class FedYogi(_AdaptiveServer):
    """Server Yogi: v moves toward delta^2 additively, so it grows and shrinks more gently than Adam's."""

    Settings = FedYogiSettings
    settings: FedYogiSettings

    def second_moment(self, v: torch.Tensor, delta_squared: torch.Tensor) -> torch.Tensor:
        return v - (1 - self.settings.beta2) * delta_squared * torch.sign(v - delta_squared)
