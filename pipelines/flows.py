"""The coordinator flow `federated-training`: Prefect around the engine's one round loop.

The loop, quorum, warm start, champion and cleanup live in fedsilo.coordinator; this flow gives it
Prefect-backed silos (tasks here, or flow runs on the silos' workers), a Prefect task for each
round's aggregation, the MLflow tracker, and a reporter for Prefect artifacts and events.
"""

from datetime import datetime

from prefect import flow, get_run_logger
from prefect.states import Failed

from fedsilo.coordinator import Coordinator, JobResult
from fedsilo.federation import FederationError, JobPaths, exchange_root
from fedsilo.scenario import Scenario
from fedsilo.tracking import FederationTracker
from pipelines.report import PrefectReporter
from pipelines.silos import silos_for
from pipelines.tasks import aggregate


@flow(
    name="federated-training",
    description="Federated fine-tuning of one shared model across silos, tracked in MLflow.",
    log_prints=True,
)
def federated_training(scenario: Scenario, job_name: str = "") -> JobResult:
    """Run one federated job of `scenario` and record it in MLflow.

    Args:
        scenario: the scenario: silos, data, model, federation, evaluation, tracking, retraining.
        job_name: the MLflow run name of this job; empty: the scenario name and the start time.
    """
    job = job_name or f"{scenario.name}-{datetime.now():%Y%m%d-%H%M%S}"
    tracker = FederationTracker(scenario, job)
    tracker.start()
    paths = JobPaths.under(exchange_root(scenario, tracker.artifact_uri), job)
    coordinator = Coordinator(
        scenario,
        job,
        silos_for(scenario, paths, job),
        tracker,
        paths,
        reporters=[PrefectReporter(scenario, job)],
        aggregate=aggregate,
        logger=get_run_logger(),
    )
    try:
        return coordinator.run()
    except FederationError as exc:  # an expected outcome: fail with its message, no traceback
        return Failed(message=str(exc))


__all__ = ["JobResult", "federated_training"]
