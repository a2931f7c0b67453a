"""Prefect tasks: one per (round, silo) for fit, evaluate and personalize, plus aggregation.

Tasks pass weight references and small records, never tensors.
"""

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from fedsilo.coordinator import aggregate_round
from fedsilo.messages import DataSummary, Evaluation, FitReport, MaskedUpdate, Scores, WeightRef
from fedsilo.scenario import Scenario
from fedsilo.silo import participant, summarize

PROGRESS_EVERY = 0.25  # log a silo's training progress every quarter of its steps


def _progress_logger(silo: str, what: str):
    logger, marks = get_run_logger(), set()

    def progress(step: int, total: int, loss: float) -> None:
        mark = int(step / total / PROGRESS_EVERY)
        if mark not in marks or step == total:
            marks.add(mark)
            logger.info("%s %s: step %d/%d, loss %.3f", silo, what, step, total, loss)

    return progress


@task(name="prepare-silo", task_run_name="prepare-{silo}", cache_policy=NO_CACHE)
def prepare_silo(scenario: Scenario, silo: str) -> DataSummary:
    """Load, partition and split the silo's data; report its label counts (never rows)."""
    return summarize(scenario, silo)


@task(
    name="fit-silo",
    task_run_name="fit-{silo}-round-{round_index}",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=2,
    timeout_seconds=3600,
)
def fit_silo(
    scenario: Scenario,
    silo: str,
    round_index: int,
    global_ref: WeightRef,
    update_uri: str,
    config: dict[str, float] | None = None,
) -> FitReport:
    """Local training of one silo from the current global model, with the strategy's settings."""
    progress = _progress_logger(silo, f"round {round_index}")
    report = participant(scenario, silo).fit(global_ref, round_index, update_uri, progress, config)
    get_run_logger().info(
        "%s round %d: local accuracy %.3f in %.1fs", silo, round_index, report.local.accuracy, report.seconds
    )
    return report


def fit_with_limits(scenario: Scenario):
    """`fit_silo` with the scenario's Prefect retries and timeout."""
    federation = scenario.federation
    return fit_silo.with_options(
        retries=federation.silo_retries, timeout_seconds=federation.silo_timeout_seconds
    )


@task(name="evaluate-silo", task_run_name="evaluate-{silo}-{step}", cache_policy=NO_CACHE, retries=1)
def evaluate_silo(scenario: Scenario, silo: str, weights: WeightRef, step: str) -> Evaluation:
    """A model (global or champion) on one silo's test split."""
    return participant(scenario, silo).evaluate(weights)


@task(name="score-silo", task_run_name="score-{silo}-{step}", cache_policy=NO_CACHE, retries=1)
def score_silo(scenario: Scenario, silo: str, models: dict[str, WeightRef], step: str) -> Scores:
    """Several models (each silo's local one) on one silo's test split, in one task."""
    return participant(scenario, silo).evaluate_models(models)


@task(name="personalize-silo", task_run_name="personalize-{silo}", cache_policy=NO_CACHE)
def personalize_silo(scenario: Scenario, silo: str, weights: WeightRef, steps: int) -> Evaluation:
    """The final global model fine-tuned on one silo's own data, scored on its own test split."""
    return participant(scenario, silo).personalize(weights, steps, _progress_logger(silo, "personalize"))


@task(
    name="mask-silo",
    task_run_name="mask-{silo}-round-{round_index}-attempt-{attempt}",
    cache_policy=NO_CACHE,
    retries=1,
)
def mask_silo(
    scenario: Scenario,
    silo: str,
    round_index: int,
    attempt: int,
    peers: dict[str, str],
    update_uri: str,
    out_uri: str,
) -> MaskedUpdate:
    """Secure aggregation: the silo's kept update plus its pairwise masks with `peers`."""
    return participant(scenario, silo).mask(update_uri, round_index, attempt, peers, out_uri)


# The engine's aggregation step as a task: the strategy's aggregate of the updates that arrived;
# updates that fail their checksum or their checks are left out and returned with the reason.
aggregate = task(
    aggregate_round, name="aggregate", task_run_name="aggregate-round-{round_index}", cache_policy=NO_CACHE
)
