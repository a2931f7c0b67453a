"""Registering a silo with a Prefect server: its work pool and its deployment of the silo flow.

`fedsilo worker` calls this before starting the worker; prefect.yaml declares the same
deployments for people who manage them with `prefect deploy`.
"""

from prefect import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.deployments.runner import EntrypointType
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.workers.process import ProcessWorker

from pipelines.silo_flow import SILO_FLOW, pool_name, silo_round


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
    """Make the silo's pool and its `silo-round/<silo>` deployment; return the deployment name."""
    pool = pool_name(silo)
    ensure_pool(pool, f"fedsilo silo {silo}: runs only this silo's steps, next to its data")
    deployment = silo_round.to_deployment(
        name=silo,
        work_pool_name=pool,
        entrypoint_type=EntrypointType.MODULE_PATH,  # the installed package, no source checkout
        description=f"Steps of silo {silo}, run by its own worker (`fedsilo worker --silo {silo}`).",
        tags=["fedsilo", f"silo:{silo}"],
    )
    deployment.apply()
    return f"{SILO_FLOW}/{silo}"
