"""Central (client-level) DP at the coordinator, after McMahan et al. 2018 (DP-FedAvg).

Each silo's change to the global model is clipped to L2 norm C (by the coordinator, or by the silo
itself under secure aggregation), every silo counts once (weight 1, so one silo moves the sum by
at most C), and the coordinator adds Gaussian noise of standard deviation sigma * C to the sum
before dividing by the number of silos. The released global model is then (epsilon, delta)-DP
with respect to any one silo's whole data set; `fedsilo.privacy.accounting` gives epsilon.
"""

import math
import secrets

import torch

from fedsilo.weights import State


def clip_to_norm(local: State, current: State, max_norm: float) -> tuple[State, float]:
    """The local model moved back toward `current` so its floating change has L2 norm <= max_norm;
    also the norm before clipping."""
    names = [n for n, t in current.items() if t.is_floating_point()]
    norm = math.sqrt(sum(float((local[n].double() - current[n].double()).pow(2).sum()) for n in names))
    if norm <= max_norm:
        return local, norm
    factor = max_norm / norm
    clipped = dict(local)
    for name in names:
        base = current[name].double()
        clipped[name] = (base + (local[name].double() - base) * factor).to(current[name].dtype)
    return clipped, norm


def noise_generator() -> torch.Generator:
    """Noise from the OS's randomness: noise anyone could regenerate from a seed protects nothing."""
    return torch.Generator().manual_seed(secrets.randbits(63))


def add_noise(delta_sum: State, std: float, generator: torch.Generator) -> State:
    """delta_sum plus N(0, std^2) on every coordinate."""
    return {
        name: value + torch.randn(value.shape, dtype=torch.float64, generator=generator) * std
        for name, value in delta_sum.items()
    }
