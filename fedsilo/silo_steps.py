"""The built-in steps' silo handlers; import this module (or `handle` from it) on the silo side.

Each handler builds (once per job and process) the silo's participant and answers with a small
record. Privacy mechanisms plug into fit as hooks chosen here from the scenario: DP-SGD as the
training hook, secure aggregation as the upload hook (its mask step registers its own handler).

Under DP-SGD a silo scores on its test split only this job's models (`only_job_models`): the global
model of a round, a silo's local model (for the silo x silo matrix), or the champion copied in for
comparison, each at the URI fedsilo.paths.JobPaths derives under the job's folder. Scoring any
weights a caller names would make the exact confusion matrix an oracle on the test rows. The job's
folder is the one the step names (a Fit's `exchange`); before the job's first fit it is the folder
of the round-0 global model, the first model every new job asks to score.
"""

from fedsilo.errors import SiloDeclined
from fedsilo.handler import handle, handles
from fedsilo.messages import DataSummary, Evaluation, FitReport, Scores, WeightRef
from fedsilo.paths import JobPaths
from fedsilo.privacy import dp_sgd, secure_aggregation
from fedsilo.scenario import Scenario
from fedsilo.silo import SiloParticipant, participant, summarize
from fedsilo.steps import Evaluate, Fit, Personalize, Prepare, Score, Step
from fedsilo.training import Progress

ROUND_ZERO = JobPaths("").global_uri(0).lstrip("/")  # global-000.safetensors


def job_models(scenario: Scenario, folder: str) -> set[str]:
    """Every model URI of the job in `folder`: each round's global model, each silo's local model
    (its update file, or rebuilt from a 16-bit change) and the champion's copy."""
    paths, rounds, silos = JobPaths(folder), scenario.federation.rounds, scenario.silo_names()
    trained = [(r, silo) for r in range(1, rounds + 1) for silo in silos]
    local = {paths.update_uri(r, s) for r, s in trained} | {paths.local_uri(r, s) for r, s in trained}
    return {paths.global_uri(r) for r in range(rounds + 1)} | local | {paths.champion_uri()}


def only_job_models(scenario: Scenario, member: SiloParticipant, step: Step, refs: list[WeightRef]) -> None:
    """Under DP-SGD, decline (SiloDeclined, naming the rule) to score any model that is not this
    job's; the job's folder is the step's, the one pinned by a fit, or pinned by round 0's model."""
    if scenario.privacy.dp is None:
        return
    folder = getattr(step, "exchange", "") or member.job_folder
    for ref in refs:
        if folder is None and ref.uri.endswith(f"/{ROUND_ZERO}"):
            folder = member.job_folder = ref.uri.rsplit("/", 1)[0]
        if folder is None or ref.uri not in job_models(scenario, folder):
            raise SiloDeclined(
                f"silo {member.silo}: under privacy.dp a silo scores only this job's models (under "
                f"{folder or 'the folder of its round-0 model'}); {ref.uri} is not one"
            )


@handles(Prepare)
def prepare(scenario: Scenario, silo: str, step: Prepare, progress: Progress | None) -> DataSummary:
    return summarize(scenario, silo)


@handles(Fit)
def fit(scenario: Scenario, silo: str, step: Fit, progress: Progress | None) -> FitReport:
    member = participant(scenario, silo)
    member.job_folder = step.exchange  # where this job's models are
    return member.fit(
        step.weights,
        step.round_index,
        JobPaths(step.exchange).update_uri(step.round_index, silo),
        progress,
        step.config,
        training=dp_sgd.training_for(scenario),
        upload=secure_aggregation.upload_for(scenario),
    )


@handles(Evaluate)
def evaluate(scenario: Scenario, silo: str, step: Evaluate, progress: Progress | None) -> Evaluation:
    member = participant(scenario, silo)
    only_job_models(scenario, member, step, [step.weights])
    return member.evaluate(step.weights)


@handles(Score)
def score(scenario: Scenario, silo: str, step: Score, progress: Progress | None) -> Scores:
    member = participant(scenario, silo)
    only_job_models(scenario, member, step, list(step.models.values()))
    return member.evaluate_models(step.models)


@handles(Personalize)
def personalize(scenario: Scenario, silo: str, step: Personalize, progress: Progress | None) -> Evaluation:
    if scenario.privacy.dp:
        raise SiloDeclined(
            f"silo {silo}: under privacy.dp a silo does not personalize: the personalized model would "
            "train outside the privacy budget"
        )
    return participant(scenario, silo).personalize(step.weights, step.steps, progress)


__all__ = ["handle"]
