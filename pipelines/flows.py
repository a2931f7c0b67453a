"""The coordinator flow `federated-training`: Prefect around the engine's one round loop.

The loop, quorum, warm start, champion and cleanup live in the engine (fedsilo.engine); this flow
hands `run_job` a Prefect transport (tasks here, or runs on the silos' workers), a Prefect task
for the coordinator's own work (`aggregate-round-<r>`) and a reporter for artifacts and events.
"""

from datetime import datetime

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Failed

from fedsilo.engine import run_job
from fedsilo.engine.run import job_name as name_job
from fedsilo.errors import FederationError
from fedsilo.records import JobResult
from fedsilo.scenario import Scenario
from pipelines.report import PrefectReporter
from pipelines.tasks import phase
from pipelines.transports import transport_for


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
    job = name_job(scenario, started, job_name, resume_job)
    try:
        return run_job(
            scenario,
            lambda job, paths: transport_for(scenario, job),
            reporters=[PrefectReporter(scenario, job)],
            job=job,
            resume_job=resume_job,
            retrying=(flow_run.run_count or 1) > 1,
            phase=phase,
            logger=get_run_logger(),
        )
    except FederationError as exc:  # an expected outcome: fail with its message, no traceback
        return Failed(message=str(exc))


__all__ = ["JobResult", "federated_training"]
