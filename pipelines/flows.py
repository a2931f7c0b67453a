"""The coordinator flow `federated-training`: Prefect around the engine's one round loop.

The loop, quorum, warm start, champion and cleanup live in fedsilo.coordinator; this flow gives it
Prefect-backed silos (tasks here, or flow runs on the silos' workers), a Prefect task for each
round's aggregation, the MLflow tracker, and a reporter for Prefect artifacts and events.
"""

from datetime import datetime

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Failed

from fedsilo.coordinator import Coordinator, open_job
from fedsilo.federation import FederationError, JobPaths, exchange_root
from fedsilo.records import JobResult
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
def federated_training(scenario: Scenario, job_name: str = "", resume_job: str = "") -> JobResult:
    """Run one federated job of `scenario` and record it in MLflow.

    Args:
        scenario: the scenario: silos, data, model, federation, evaluation, tracking, retraining.
        job_name: the MLflow run name of this job; empty: the scenario name and the start time.
        resume_job: the name of an interrupted job to go on with from its last completed round
            (the same MLflow runs); a Prefect retry of this flow run resumes its own job by itself.
    """
    started = flow_run.scheduled_start_time or datetime.now()  # the same on every retry
    job = resume_job or job_name or f"{scenario.name}-{started:%Y%m%d-%H%M%S}"
    tracker = FederationTracker(scenario, job)
    try:
        resume = open_job(tracker, resume_job, retrying=(flow_run.run_count or 1) > 1)
    except LookupError as exc:
        return Failed(message=f"cannot resume: {exc}")
    paths = JobPaths.under(exchange_root(scenario, tracker.artifact_uri), job)
    silos = silos_for(scenario, paths, job)
    coordinator = Coordinator(
        scenario,
        job,
        silos,
        tracker,
        paths,
        reporters=[PrefectReporter(scenario, job)],
        aggregate=aggregate,
        logger=get_run_logger(),
        resume=resume,
    )
    try:
        return coordinator.run()
    except FederationError as exc:  # an expected outcome: fail with its message, no traceback
        return Failed(message=str(exc))
    finally:
        silos.close()


__all__ = ["JobResult", "federated_training"]
