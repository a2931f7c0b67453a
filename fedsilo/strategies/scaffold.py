"""SCAFFOLD (Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning"): drift correction with control variates, option II.

The server keeps its control variate c in its state (saved with each round's model, so a resumed
job goes on with it) and sends it with every fit. Silo i keeps its own c_i on its own disk
(fedsilo.drift) and takes K plain SGD steps from the global model x,

    y <- y - lr (g(y) - c_i + c),       then proposes   dc_i = -c + (x - y) / (K lr).

The server steps like FedAvg on the weighted mean of the updates (server learning rate 1: the
paper's global step size 1) and moves c by the silos' changes,

    c <- c + (1/N) sum_{i in S} dc_i,   dc_i = -c - (y_i - x) / (K_i lr),

deriving each dc_i from the silo's update (checked, and clipped to the round's influence bound)
and the steps the scenario gives that silo, rather than receiving it: no silo sends a control
variate of its own choosing. Each dc_i is also clipped to 3x the round's median dc norm (the last
such bound when fewer than three silos answer). So that c stays the mean of the c_i (the
algorithm's invariant), the server tells every silo, with the next fit, how its change counted:
the factor its update was clipped by, the factor its dc_i was clipped by, or not at all (absent,
refused, or its round's aggregate rolled back); a silo commits to its c_i exactly that change.
"""

import statistics
from collections.abc import Iterable
from dataclasses import replace
from typing import Literal

import torch
from pydantic import Field

from fedsilo.strategies.base import RunFacts, SiloUpdate
from fedsilo.strategies.mean import FedAvg, ServerStepSettings, WeightedSum
from fedsilo.weights import State

CLIP_FACTOR = 3.0  # each dc_i at most this many times the round's median dc norm
COUNTED = "counted/"  # counted/<silo>: (round, update scale, control scale) of its last counted change


class ScaffoldSettings(ServerStepSettings):
    """scaffold: FedAvg with SCAFFOLD's control variates; silos take plain SGD steps (the
    algorithm's local step) at local_learning_rate, whatever federation.optimizer says."""

    name: Literal["scaffold"] = "scaffold"
    local_learning_rate: float | None = Field(
        None, gt=0, le=10, description="the silos' plain SGD step size; null: federation.learning_rate"
    )


class Scaffold(FedAvg):
    """FedAvg's server step, with the server control variate c carried across rounds."""

    Settings = ScaffoldSettings
    settings: ScaffoldSettings
    needs_individual_updates = True  # each dc_i comes from one silo's update

    def __init__(self, **settings) -> None:
        super().__init__(**settings)
        self.control: State = {}
        self.counted: State = {}  # silo -> tensor(round, update scale, control scale)
        self.facts: RunFacts | None = None
        self.round_index = 0
        self.last_bound: float | None = None

    def bind(self, facts: RunFacts) -> None:
        rate = self.settings.local_learning_rate
        self.facts = replace(facts, learning_rate=rate) if rate else facts

    def configure_fit(self, round_index: int) -> dict[str, float]:
        self.round_index = round_index
        return {"scaffold_learning_rate": self._facts().learning_rate}

    def fit_tensors(self) -> State:
        return dict(self.control) | {COUNTED + silo: value for silo, value in self.counted.items()}

    def aggregate(self, current: State, updates: Iterable[SiloUpdate]) -> State:
        total, changes, scales = WeightedSum(), {}, {}
        for update in updates:
            total.add(update.state, update.num_examples)
            changes[update.silo], scales[update.silo] = self._control_change(current, update), update.scale
        factors = self._clip_factors(changes)
        self.control = self._moved_control(changes, factors)
        self.counted = {
            silo: torch.tensor([self.round_index, scales[silo], factors[silo]], dtype=torch.float64)
            for silo in changes
        }
        return self.apply(current, total.mean())

    def _control_change(self, current: State, update: SiloUpdate) -> State:
        """dc_i = -c - (y_i - x) / (K_i lr): the change silo i made to its own control variate."""
        facts = self._facts()
        scale = 1.0 / (facts.steps_of(update.silo) * facts.learning_rate)
        change = {}
        for name, value in update.state.items():
            if value.is_floating_point():
                drift = (value.double() - current[name].double()) * scale
                change[name] = -self.control.get(name, torch.zeros_like(drift)).double() - drift
        return change

    def _clip_factors(self, changes: dict[str, State]) -> dict[str, float]:
        """Each dc_i's factor: CLIP_FACTOR x the median norm (3+ silos; else the last bound)."""
        norms = {silo: _norm(change) for silo, change in changes.items()}
        if len(norms) >= 3:
            self.last_bound = CLIP_FACTOR * statistics.median(norms.values())
        bound = self.last_bound
        return {silo: bound / n if bound and n > bound else 1.0 for silo, n in norms.items()}

    def _moved_control(self, changes: dict[str, State], factors: dict[str, float]) -> State:
        """c + (1/N) sum_i factor_i dc_i."""
        if not changes:
            return self.control
        first = next(iter(changes.values()))
        moved = {name: self.control.get(name, torch.zeros_like(t)).double() for name, t in first.items()}
        for silo, change in changes.items():
            for name, value in change.items():
                moved[name] += value * (factors[silo] / self._facts().silos)
        return {name: value.float() for name, value in moved.items()}

    def _facts(self) -> RunFacts:
        if self.facts is None:
            raise RuntimeError("scaffold needs the job's facts: bind() them once silos described their data")
        return self.facts

    def state_dict(self) -> State:
        state = {f"control/{name}": value for name, value in self.control.items()}
        state |= {COUNTED + silo: value for silo, value in self.counted.items()}
        return state | ({"control_bound": torch.tensor(self.last_bound)} if self.last_bound else {})

    def load_state_dict(self, state: State) -> None:
        self.control = {k.removeprefix("control/"): v for k, v in state.items() if k.startswith("control/")}
        self.counted = {k.removeprefix(COUNTED): v for k, v in state.items() if k.startswith(COUNTED)}
        bound = state.get("control_bound")
        self.last_bound = float(bound) if bound is not None else None


def _norm(state: State) -> float:
    return float(sum(float(t.pow(2).sum()) for t in state.values())) ** 0.5
