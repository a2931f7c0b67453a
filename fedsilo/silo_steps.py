"""The built-in steps' silo handlers; import this module (or `handle` from it) on the silo side.

Each handler builds (once per job and process) the silo's participant and answers with a small
record. Privacy mechanisms plug into fit as hooks chosen here from the scenario: DP-SGD as the
training hook, secure aggregation as the upload hook (its mask step registers its own handler).

Under DP-SGD a silo scores on its test split only this job's models (`only_job_models`): the global
model of a round, a silo's local model (for the silo x silo matrix), or the champion copied in for
comparison, each at the URI fedsilo.paths.JobPaths derives under the job's folder, which the step
names (`exchange`). Scoring any weights a caller names would make the exact confusion matrix an
oracle on the test rows; until steps are signed, a caller can still name another folder.
"""

from dataclasses import replace

from fedsilo.errors import SiloDeclined
from fedsilo.handler import handle, handles
from fedsilo.messages import DataSummary, Evaluation, FitReport, Kept, Scores, WeightRef
from fedsilo.paths import JobPaths
from fedsilo.privacy import dp_sgd, secure_aggregation
from fedsilo.scenario import Scenario
from fedsilo.silo import participant, summarize
from fedsilo.steps import Evaluate, Fit, Keep, Prepare, Score
from fedsilo.training import Progress


def job_models(scenario: Scenario, folder: str) -> set[str]:
    """Every model URI of the job in `folder`: each round's global model, each silo's local model
    (its update file, or rebuilt from a 16-bit change) and the champion's copy."""
    paths, rounds, silos = JobPaths(folder), scenario.federation.rounds, scenario.silo_names()
    trained = [(r, silo) for r in range(1, rounds + 1) for silo in silos]
    local = {paths.update_uri(r, s) for r, s in trained} | {paths.local_uri(r, s) for r, s in trained}
    return {paths.global_uri(r) for r in range(rounds + 1)} | local | {paths.champion_uri()}


def only_job_models(scenario: Scenario, silo: str, step: Evaluate | Score, refs: list[WeightRef]) -> None:
    """Under DP-SGD, decline (SiloDeclined, naming the rule) to score any model that is not one of
    the job's in the folder the step names."""
    if scenario.privacy.dp is None:
        return
    models = job_models(scenario, step.exchange) if step.exchange else set()
    for ref in refs:
        if ref.uri not in models:
            raise SiloDeclined(
                f"silo {silo}: under privacy.dp a silo scores only this job's models (under "
                f"{step.exchange or 'the job folder the step must name'}); {ref.uri} is not one"
            )


@handles(Prepare)
def prepare(scenario: Scenario, silo: str, step: Prepare, progress: Progress | None) -> DataSummary:
    return summarize(scenario, silo)


@handles(Fit)
def fit(scenario: Scenario, silo: str, step: Fit, progress: Progress | None) -> FitReport:
    return participant(scenario, silo).fit(
        step.weights,
        step.round_index,
        JobPaths(step.exchange).update_uri(step.round_index, silo),
        progress,
        step.config,
        training=dp_sgd.training_for(scenario, job=step.exchange),
        upload=secure_aggregation.upload_for(scenario),
        extra=step.extra,
    )


@handles(Evaluate)
def evaluate(scenario: Scenario, silo: str, step: Evaluate, progress: Progress | None) -> Evaluation:
    only_job_models(scenario, silo, step, [step.weights])
    member = participant(scenario, silo)
    evaluation = member.evaluate(step.weights, step.exchange)
    if step.validation and member.validation is not None and not scenario.privacy.dp:
        return replace(evaluation, validation=member.validation_confusion())
    return evaluation


@handles(Score)
def score(scenario: Scenario, silo: str, step: Score, progress: Progress | None) -> Scores:
    only_job_models(scenario, silo, step, list(step.models.values()))
    return participant(scenario, silo).evaluate_models(step.models, step.exchange)


@handles(Keep)
def keep(scenario: Scenario, silo: str, step: Keep, progress: Progress | None) -> Kept:
    from fedsilo.keeping import keep as keep_best

    return keep_best(scenario, participant(scenario, silo), step, progress)


__all__ = ["handle"]
