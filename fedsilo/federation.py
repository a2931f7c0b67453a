"""Coordinator-side steps of a round, as plain functions; the loop itself lives in pipelines/."""

import math
from dataclasses import dataclass
from pathlib import Path

from fedsilo.aggregation import FedAvg, WeightedSum, make_strategy
from fedsilo.metrics import union_metrics
from fedsilo.scenario import Scenario
from fedsilo.silo import Evaluation, FitReport
from fedsilo.weights import WeightRef, read_state, write_state


class FederationError(Exception):
    """A round cannot go on (too few silos answered); the message names them."""


@dataclass(frozen=True)
class JobPaths:
    """Where one job's weights live: `<root>/<job>/global-003.safetensors`, `round-003/<silo>...`."""

    root: str

    def global_uri(self, round_index: int) -> str:
        return f"{self.root}/global-{round_index:03d}.safetensors"

    def update_uri(self, round_index: int, silo: str) -> str:
        return f"{self.root}/round-{round_index:03d}/{silo}.safetensors"

    @classmethod
    def under(cls, folder: str | Path, job_id: str) -> "JobPaths":
        return cls(Path(folder).resolve().joinpath(job_id).as_uri())


def strategy_for(scenario: Scenario) -> FedAvg:
    federation = scenario.federation
    return make_strategy(federation.strategy, federation.server_learning_rate, federation.server_momentum)


def check_quorum(scenario: Scenario, answered: list[str], round_index: int) -> None:
    """Fail the round, naming the missing silos, when fewer than `min_silos` answered."""
    if len(answered) < scenario.min_silos:
        missing = sorted(set(scenario.silo_names()) - set(answered))
        raise FederationError(
            f"round {round_index}: only {len(answered)} of {len(scenario.silos)} silos answered "
            f"(min_silos is {scenario.min_silos}); missing: {', '.join(missing)}"
        )


def aggregate(strategy: FedAvg, current: WeightRef, reports: list[FitReport], out_uri: str) -> WeightRef:
    """FedAvg the silos' updates (read one at a time) and apply the server step."""
    total = WeightedSum()
    for report in reports:
        total.add(read_state(report.update), report.num_examples)
    return write_state(strategy.apply(read_state(current), total.mean()), out_uri)


def global_metrics(evaluations: list[Evaluation], num_classes: int) -> dict[str, float]:
    """accuracy, f1_macro and loss of one model over the union of the silos' test sets."""
    return union_metrics(
        [e.y_true for e in evaluations],
        [e.y_pred for e in evaluations],
        [e.loss for e in evaluations],
        num_classes,
    )


def update_bytes(reports: list[FitReport]) -> int:
    """Bytes that crossed silo boundaries in a round: the global model out, each update back."""
    return 2 * sum(r.update.size for r in reports)


def beats(candidate: float, champion: float | None) -> bool:
    """Whether a candidate score is at least as good as the champion's (none: always)."""
    return champion is None or math.isnan(champion) or candidate >= champion
