"""SCAFFOLD at the silo: its control variate c_i, kept on its own disk per job and round, and the
gradient correction c - c_i its local steps take (fedsilo.strategies.scaffold is the server's
side). Only trainable parameters are corrected; personal layers are not (they are never averaged).
"""

from dataclasses import replace

import torch

from fedsilo.silo_store import RoundStore
from fedsilo.strategies.scaffold import COUNTED
from fedsilo.weights import State

CONFIG_KEY = "scaffold_learning_rate"  # in a fit's config: this round runs SCAFFOLD at that rate


class ControlVariate:
    """One silo's c_i across a job's rounds. Each round keeps the c_i it started from, the drift
    (x - y) / (K lr) it trained along and the server's c it used; the next round commits the
    change the server counted (fedsilo.strategies.scaffold), so c stays the mean of the c_i."""

    def __init__(self, silo: str):
        self.silo = silo
        self.rounds = RoundStore(silo, "control")

    def own(self, job: str, round_index: int, server: State) -> State:
        """c_i at the start of `round_index`: the last round's, plus the change the server counted."""
        found = self.rounds.latest_round(job, before_round=round_index)
        if found is None:
            return {}
        last_round, kept = found
        committed = _part(kept, "committed/")
        counted = server.get(COUNTED + self.silo)
        if counted is None or int(counted[0]) != last_round:  # absent, refused or rolled back
            return committed
        update_scale, control_scale = float(counted[1]), float(counted[2])
        used, drift = _part(kept, "server/"), _part(kept, "drift/")
        return {
            name: _of(committed, name) + control_scale * (update_scale * drift[name] - _of(used, name))
            for name in drift
        }

    def keep(self, job: str, round_index: int, own: State, server: State, drift: State) -> None:
        """Keep this round's c_i, drift (x - y) / (K lr) and the server's c, for the next round."""
        kept = {f"committed/{name}": value for name, value in own.items()}
        kept |= {f"server/{name}": value for name, value in server.items() if not name.startswith(COUNTED)}
        kept |= {f"drift/{name}": value for name, value in drift.items()}
        self.rounds.remember(job, round_index, kept)


def _part(state: State, prefix: str) -> State:
    return {name.removeprefix(prefix): value for name, value in state.items() if name.startswith(prefix)}


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
        self.own: State = {}
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
        scaffold.own = variate.own(job, round_index, server)
        correction = {name: _of(server, name) - _of(scaffold.own, name) for name in names}
        return replace(
            settings, optimizer="sgd", momentum=0.0, learning_rate=rate, correction=correction, schedule=None
        ), scaffold

    def finish(self, steps: int) -> None:
        """Keep c_i's round: where it started, and the drift of this round's `steps` local steps."""
        drift = {
            name: ((self.start[name].double() - p.detach().double()) / (steps * self.rate)).float()
            for name, p in self.model.named_parameters()
            if name in self.start
        }
        self.variate.keep(self.job, self.round_index, self.own, self.server, drift)
