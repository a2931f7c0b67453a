"""Deployments: each silo's pool and `silo-job/<silo>`, and each scenario's `federated-training/<name>`.

`fedsilo worker` registers its silo before starting the worker; `fedsilo serve` serves every
scenario's deployment; prefect.yaml declares the same deployments for `prefect deploy`.
"""

from pathlib import Path

from prefect import get_client, serve
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.schedules import Cron
from prefect.workers.process import ProcessWorker

from fedsilo.names import prefect_name, silo_deployment_name, work_pool_name
from fedsilo.scenario import Scenario
from pipelines.flows import federated_training
from pipelines.silo_flow import SILO_FLOW, silo_job


def ensure_pool(name: str, description: str) -> None:
    """Create a process work pool unless one of that name exists."""
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return
        except ObjectNotFound:
            pass
        try:
            pool = WorkPoolCreate(
                name=name,
                type=ProcessWorker.type,
                description=description,
                base_job_template=ProcessWorker.get_default_base_job_template(),
            )
            client.create_work_pool(pool)
        except ObjectAlreadyExists:  # another worker of this silo made it meanwhile
            pass


def register_silo(silo: str) -> str:
    """Make the silo's pool and its `silo-job/<silo>` deployment; return the deployment name."""
    pool = work_pool_name(silo)
    ensure_pool(pool, f"fedsilo silo {silo}: runs only this silo's steps, next to its data")
    deployment = silo_job.to_deployment(
        name=silo_deployment_name(silo),
        work_pool_name=pool,
        entrypoint_type=EntrypointType.MODULE_PATH,  # the installed package, no source checkout
        description=f"Steps of silo {silo}, run by its own worker (`fedsilo worker --silo {silo}`).",
        tags=["fedsilo", f"silo:{silo}"],
    )
    deployment.apply()
    return f"{SILO_FLOW}/{silo_deployment_name(silo)}"


def scenario_deployment(scenario: Scenario, source: str) -> RunnerDeployment:
    """The `federated-training/<scenario>` deployment of one scenario (read from file `source`).

    Its `scenario` parameter defaults to the file's content, so the Prefect UI's run form shows
    every setting (rounds, strategy, data, retraining) with the schema's descriptions; the file's
    `retraining.schedule` becomes the deployment's cron schedule.
    """
    retraining = scenario.retraining
    schedules = [Cron(retraining.schedule, timezone=retraining.timezone)] if retraining.schedule else None
    return federated_training.to_deployment(
        name=prefect_name(scenario.name),
        parameters={"scenario": scenario.model_dump(mode="json")},
        schedules=schedules,
        description=f"{scenario.description or scenario.name} (from {Path(source).name})",
        tags=["fedsilo", f"scenario:{scenario.name}", f"domain:{scenario.domain}"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def serve_scenarios(scenarios: list[Scenario], sources: list[str]) -> None:
    """Serve one deployment per scenario from this process until interrupted; each run is the
    coordinator of its job (its silos run as tasks, or on their workers in distributed mode)."""
    serve(*[scenario_deployment(scenario, source) for scenario, source in zip(scenarios, sources)])
