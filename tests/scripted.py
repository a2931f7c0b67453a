"""Silos answered by a script instead of a model: each silo's update moves every floating weight
of the global model by a fixed amount, so aggregation rules can be checked by hand."""

from dataclasses import dataclass, field

import torch

from fedsilo.handler import handle
from fedsilo.messages import DataSummary, Evaluation, FitReport
from fedsilo.paths import JobPaths
from fedsilo.privacy import secagg_silo
from fedsilo.privacy.secagg_steps import Mask, ShareKeys, Unmask
from fedsilo.steps import Evaluate, Fit, Prepare, Score
from fedsilo.weights import read_state, write_state


@dataclass
class Scripted:
    """A transport handler (see fedsilo.transport.InProcess): `shift[silo]` is what that silo
    adds to every floating weight, `counts[silo]` its training examples. Under secure
    aggregation the silos' own handlers answer its steps; silos in `drop_mask` are lost in the
    masking step after writing their masked vector (as if it arrived late)."""

    shift: dict[str, float]
    counts: dict[str, int]
    drop_mask: set[str] = field(default_factory=set)
    asked: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, scenario, silo, step):
        self.asked.append((silo, step.label))
        if isinstance(step, Prepare):
            labels = scenario.data.labels or ["x", "y"]
            train = {label: 0 for label in labels} | {labels[0]: self.counts[silo]}
            return DataSummary(silo, train, dict.fromkeys(labels[:2], 5))
        if isinstance(step, Evaluate):
            return _evaluation(scenario, silo)
        if isinstance(step, Score):
            return None
        if isinstance(step, Fit):
            return self._fit(scenario, silo, step)
        if isinstance(step, ShareKeys | Mask | Unmask):
            reply = handle(scenario, silo, step)
            if silo in self.drop_mask and isinstance(step, Mask):
                raise TimeoutError(f"{silo} was lost after masking")
            return reply
        raise AssertionError(f"unexpected step {step}")

    def _fit(self, scenario, silo, step: Fit) -> FitReport:
        current = read_state(step.weights)
        local = {k: v + self.shift[silo] if v.is_floating_point() else v for k, v in current.items()}
        uri = JobPaths(step.exchange).update_uri(step.round_index, silo)
        n = self.counts[silo]
        if not scenario.privacy.secure_aggregation:
            return FitReport(
                silo, step.round_index, write_state(local, uri), n, 0.1, _evaluation(scenario, silo), 0.0
            )
        sent = secagg_silo.keep_update(scenario, silo, local, current, n, step.config, uri)
        evaluation = _evaluation(scenario, silo)
        return FitReport(
            silo,
            step.round_index,
            None,
            n,
            0.1,
            evaluation,
            0.0,
            public_key=sent.public_key,
            clipped=sent.clipped,
            update_norm=sent.update_norm,
        )


def _evaluation(scenario, silo: str) -> Evaluation:
    """All correct, on the 10 test examples prepare reported (5 of each of the first two labels)."""
    size = len(scenario.data.labels)
    return Evaluation(
        silo, 1.0, 1.0, 0.1, [[5 if i == j < 2 else 0 for j in range(size)] for i in range(size)]
    )


def moved_by(after: dict, before: dict) -> float:
    """The one amount every floating weight moved by (asserting that it is one amount)."""
    deltas = torch.cat(
        [(after[n].double() - before[n].double()).flatten() for n in before if before[n].is_floating_point()]
    )
    return float(deltas.mean())
