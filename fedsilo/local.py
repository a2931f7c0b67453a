"""Silos in this process with no orchestrator, and a tracker that records nothing: the engine on
its own, for benchmarks and tests.

The Prefect flow reaches silos through tasks or workers instead; the round loop is the same.
"""

import logging

from fedsilo.federation import JobPaths
from fedsilo.messages import DataSummary, Evaluation, FitReport, MaskedUpdate, Scores, WeightRef
from fedsilo.scenario import Scenario
from fedsilo.silo import participant, summarize

log = logging.getLogger("fedsilo")


class LocalSilos:
    """Every silo's participant built once in this process and called in turn; a silo that raises
    is reported missing with its error logged, as a failed task would be."""

    def __init__(self, paths: JobPaths):
        self.paths = paths

    def _each(self, scenario: Scenario, call, only=None) -> tuple[list, list[str]]:
        replies, missing = [], []
        for silo in scenario.silo_names():
            if only is not None and silo not in only:
                continue
            try:
                replies.append(call(silo))
            except Exception as exc:
                log.warning("silo %s did not answer: %s", silo, exc)
                missing.append(silo)
        return replies, missing

    def prepare(self, scenario: Scenario) -> tuple[list[DataSummary], list[str]]:
        return self._each(scenario, lambda silo: summarize(scenario, silo))

    def fit(
        self, scenario: Scenario, round_index: int, weights: WeightRef, config: dict[str, float]
    ) -> tuple[list[FitReport], list[str]]:
        def fit_one(silo: str) -> FitReport:
            update = self.paths.update_uri(round_index, silo)
            return participant(scenario, silo).fit(weights, round_index, update, config=config)

        return self._each(scenario, fit_one)

    def evaluate(
        self, scenario: Scenario, weights: WeightRef, step: str
    ) -> tuple[list[Evaluation], list[str]]:
        return self._each(scenario, lambda silo: participant(scenario, silo).evaluate(weights))

    def evaluate_models(
        self, scenario: Scenario, models: dict[str, WeightRef], step: str
    ) -> tuple[list[Scores], list[str]]:
        return self._each(scenario, lambda silo: participant(scenario, silo).evaluate_models(models))

    def personalize(
        self, scenario: Scenario, weights: WeightRef, steps: int
    ) -> tuple[list[Evaluation], list[str]]:
        return self._each(scenario, lambda silo: participant(scenario, silo).personalize(weights, steps))

    def mask(
        self, scenario: Scenario, round_index: int, attempt: int, peers: dict[str, str]
    ) -> tuple[list[MaskedUpdate], list[str]]:
        def mask_one(silo: str) -> MaskedUpdate:
            update, out = (
                self.paths.update_uri(round_index, silo),
                self.paths.masked_uri(round_index, attempt, silo),
            )
            return participant(scenario, silo).mask(update, round_index, attempt, peers, out)

        return self._each(scenario, mask_one, only=peers)


class NullTracker:
    """Records nothing and has no registry: for benchmarks and engine tests without MLflow."""

    parent_id = ""

    def __init__(self) -> None:
        self.rounds: dict[int, dict[str, float]] = {}
        self.silos: dict[str, dict[str, dict[int, float]]] = {}
        self.matrix = None

    def log_data(self, summary: DataSummary) -> None:
        pass

    def log_global_model(self, round_index, weights_path, meta, extra_files) -> str | None:
        return None

    def log_round(self, round_index, job, silos, model_id) -> None:
        self.rounds.setdefault(round_index, {}).update(job)
        for silo, values in silos.items():
            for key, value in values.items():
                self.silos.setdefault(silo, {}).setdefault(key, {})[round_index] = value

    def log_silo_matrix(self, matrix, metric: str) -> None:
        self.matrix = matrix

    def set_tags(self, tags: dict[str, str], silo: str | None = None) -> None:
        pass

    def champion_weights(self, adapter: bool = False) -> None:
        return None

    def register(self, model_id: str, make_champion: bool, reason: str) -> None:
        return None

    def finish(self, status: str = "FINISHED") -> None:
        pass
