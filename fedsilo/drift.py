"""SCAFFOLD at the silo: its control variate c_i, kept on its own disk per job and round, and the
gradient correction c - c_i its local steps take (fedsilo.strategies.scaffold is the server's
side). Only trainable parameters are corrected; personal layers are not (they are never averaged).
"""

from dataclasses import replace

import torch

from fedsilo.silo_store import RoundStore
from fedsilo.weights import State

CONFIG_KEY = "scaffold_learning_rate"  # in a fit's config: this round runs SCAFFOLD at that rate


class ControlVariate:
    """One silo's c_i across a job's rounds."""

    def __init__(self, silo: str):
        self.rounds = RoundStore(silo, "control")

    def correction(
        self, job: str, round_index: int, server: State, names: list[str]
    ) -> dict[str, torch.Tensor]:
        """c - c_i for each named parameter (c_i as after the latest round before this one)."""
        own = self.rounds.latest(job, before_round=round_index) or {}
        return {name: _of(server, name) - _of(own, name) for name in names if name in server or name in own}

    def update(
        self, job: str, round_index: int, server: State, start: State, end: State, steps: int, rate: float
    ) -> None:
        """c_i <- c_i - c + (x - y) / (K lr), option II, for the parameters trained this round."""
        own = self.rounds.latest(job, before_round=round_index) or {}
        new = {}
        for name in start:
            drift = (start[name].double() - end[name].double()) / (steps * rate)
            new[name] = (_of(own, name).double() - _of(server, name).double() + drift).float()
        self.rounds.remember(job, round_index, new)


def _of(state: State, name: str) -> torch.Tensor:
    value = state.get(name)
    return value if value is not None else torch.zeros(())


class ScaffoldRound:
    """One SCAFFOLD fit at a silo: plain SGD at the round's rate with the correction c - c_i, then
    c_i updated from where training went."""

    def __init__(self, variate: ControlVariate, model: torch.nn.Module, job: str, round_index: int):
        self.variate, self.model, self.job, self.round_index = variate, model, job, round_index
        self.server: State = {}
        self.start: State = {}
        self.rate = 0.0

    @classmethod
    def begin(cls, variate, model, settings, config: dict, server: State, job: str, round_index: int, skip):
        """(settings for the round, the round) under SCAFFOLD; (settings, None) otherwise. `skip`:
        parameter names not corrected (personal layers)."""
        rate = float(config.get(CONFIG_KEY, 0.0))
        if rate <= 0:
            return settings, None
        names = [n for n, p in model.named_parameters() if p.requires_grad and n not in skip]
        scaffold = cls(variate, model, job, round_index)
        scaffold.server, scaffold.rate = server, rate
        scaffold.start = {n: p.detach().clone() for n, p in model.named_parameters() if n in names}
        correction = variate.correction(job, round_index, server, names)
        return replace(
            settings, optimizer="sgd", momentum=0.0, learning_rate=rate, correction=correction
        ), scaffold

    def finish(self, steps: int) -> None:
        """Update c_i from the start and end of this round's `steps` local steps."""
        end = {n: p.detach() for n, p in self.model.named_parameters() if n in self.start}
        self.variate.update(self.job, self.round_index, self.server, self.start, end, steps, self.rate)
