"""Prefect tasks: one per (round, silo) for fit and evaluate, plus aggregation and tracking.

Tasks pass weight references and small records, never tensors.
"""

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from fedsilo import federation
from fedsilo.aggregation import FedAvg
from fedsilo.scenario import Scenario
from fedsilo.silo import DataSummary, Evaluation, FitReport, initial_state, participant, summarize
from fedsilo.weights import WeightRef, write_state

PROGRESS_EVERY = 0.25  # log a silo's training progress every quarter of its steps


@task(name="prepare-silo", task_run_name="prepare-{silo}", cache_policy=NO_CACHE)
def prepare_silo(scenario: Scenario, silo: str) -> DataSummary:
    """Load, partition and split the silo's data; report its label counts (never rows)."""
    return summarize(scenario, silo)


@task(name="initial-global-model", cache_policy=NO_CACHE)
def initial_global(scenario: Scenario, input_shape: tuple[int, ...], uri: str) -> WeightRef:
    """Write the pretrained starting point as round 0's global model."""
    return write_state(initial_state(scenario, input_shape), uri)


@task(
    name="fit-silo",
    task_run_name="fit-{silo}-round-{round_index}",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=2,
    timeout_seconds=3600,
)
def fit_silo(
    scenario: Scenario, silo: str, round_index: int, global_ref: WeightRef, update_uri: str
) -> FitReport:
    """Local training of one silo from the current global model."""
    logger = get_run_logger()
    marks: set[int] = set()

    def progress(step: int, total: int, loss: float) -> None:
        mark = int(step / total / PROGRESS_EVERY)
        if mark not in marks or step == total:
            marks.add(mark)
            logger.info("%s round %d: step %d/%d, loss %.3f", silo, round_index, step, total, loss)

    report = participant(scenario, silo).fit(global_ref, round_index, update_uri, progress)
    logger.info(
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


@task(name="aggregate", task_run_name="aggregate-round-{round_index}", cache_policy=NO_CACHE)
def aggregate(
    strategy: FedAvg, current: WeightRef, reports: list[FitReport], round_index: int, out_uri: str
) -> tuple[WeightRef | None, dict[str, str]]:
    """FedAvg of the updates that arrived, then the strategy's server step; updates failing their
    checksum are left out and returned by silo with the reason."""
    return federation.aggregate(strategy, current, reports, out_uri)
