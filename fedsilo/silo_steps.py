"""The built-in steps' silo handlers; import this module (or `handle` from it) on the silo side.

Each handler builds (once per job and process) the silo's participant and answers with a small
record. Privacy mechanisms plug into fit as hooks chosen here from the scenario: DP-SGD as the
training hook, secure aggregation as the upload hook (its mask step registers its own handler).
"""

from fedsilo.handler import handle, handles
from fedsilo.messages import DataSummary, Evaluation, FitReport, Scores
from fedsilo.paths import JobPaths
from fedsilo.privacy import dp_sgd, secure_aggregation
from fedsilo.scenario import Scenario
from fedsilo.silo import participant, summarize
from fedsilo.steps import Evaluate, Fit, Personalize, Prepare, Score
from fedsilo.training import Progress


@handles(Prepare)
def prepare(scenario: Scenario, silo: str, step: Prepare, progress: Progress | None) -> DataSummary:
    return summarize(scenario, silo)


@handles(Fit)
def fit(scenario: Scenario, silo: str, step: Fit, progress: Progress | None) -> FitReport:
    update_uri = JobPaths(step.exchange).update_uri(step.round_index, silo)
    return participant(scenario, silo).fit(
        step.weights,
        step.round_index,
        update_uri,
        progress,
        step.config,
        training=dp_sgd.training_for(scenario),
        upload=secure_aggregation.upload_for(scenario),
    )


@handles(Evaluate)
def evaluate(scenario: Scenario, silo: str, step: Evaluate, progress: Progress | None) -> Evaluation:
    return participant(scenario, silo).evaluate(step.weights)


@handles(Score)
def score(scenario: Scenario, silo: str, step: Score, progress: Progress | None) -> Scores:
    return participant(scenario, silo).evaluate_models(step.models)


@handles(Personalize)
def personalize(scenario: Scenario, silo: str, step: Personalize, progress: Progress | None) -> Evaluation:
    return participant(scenario, silo).personalize(step.weights, step.steps, progress)


__all__ = ["handle"]
