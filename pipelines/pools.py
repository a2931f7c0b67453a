"""Work pools that run a silo's job runs as containers (Docker) or pods (Kubernetes).

`fedsilo worker` makes a process pool: the worker and the silo's runs share one host. A silo that
wants each job in a fresh container or pod instead gets a `docker` or `kubernetes` pool of the
same name (`fedsilo-<silo>`), whose base job template is Prefect's own default for that worker type
(shipped with Prefect, so nothing is fetched) with fedsilo's defaults filled in: the image, the
silo's data mounted read-only at /data, FEDSILO_SILO_DATA pointing at its file, and where the
MLflow server is. The silo's host then runs `prefect worker start --pool fedsilo-<silo> --type ...`
(with prefect-docker or prefect-kubernetes installed there).
"""

import copy
import json
from importlib import resources
from typing import Literal

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.exceptions import ObjectNotFound

from fedsilo.names import work_pool_name

PoolType = Literal["docker", "kubernetes"]
WORKER_METADATA = "server/api/collections_data/views/aggregate-worker-metadata.json"
COLLECTIONS = {"docker": "prefect-docker", "kubernetes": "prefect-kubernetes"}
DATA_MOUNT = "/data"


def default_template(kind: PoolType) -> dict:
    """Prefect's default base job template for a worker type, from the metadata Prefect ships."""
    metadata = json.loads(resources.files("prefect").joinpath(WORKER_METADATA).read_text())
    return copy.deepcopy(metadata[COLLECTIONS[kind]][kind]["default_base_job_configuration"])


def _set_default(template: dict, variable: str, value) -> None:
    template["variables"]["properties"][variable]["default"] = value


def silo_template(kind: PoolType, image: str, data: str, data_file: str, mlflow_uri: str) -> dict:
    """The base job template of a silo's container pool.

    `data` is, for Docker, the host folder that holds the silo's file; for Kubernetes, the name
    of a PersistentVolumeClaim holding it. Either is mounted read-only at /data.
    """
    template = default_template(kind)
    env = {"FEDSILO_SILO_DATA": f"{DATA_MOUNT}/{data_file}", "MLFLOW_TRACKING_URI": mlflow_uri}
    _set_default(template, "image", image)
    _set_default(template, "env", env)
    if kind == "docker":
        _set_default(template, "volumes", [f"{data}:{DATA_MOUNT}:ro"])
        return template
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    pod["volumes"] = [{"name": "silo-data", "persistentVolumeClaim": {"claimName": data, "readOnly": True}}]
    (container,) = pod["containers"]
    container["volumeMounts"] = [{"name": "silo-data", "mountPath": DATA_MOUNT, "readOnly": True}]
    return template


def ensure_container_pool(silo: str, kind: PoolType, template: dict) -> str:
    """Create the silo's pool with `template`, or give an existing pool of that type the template."""
    name = work_pool_name(silo)
    description = f"fedsilo silo {silo}: each job run in its own {'container' if kind == 'docker' else 'pod'}"
    with get_client(sync_client=True) as client:
        try:
            existing = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(name=name, type=kind, description=description, base_job_template=template)
            )
            return name
        if existing.type != kind:
            raise ValueError(
                f"work pool {name} exists with type {existing.type!r}; delete it "
                f"(`prefect work-pool delete {name}`) to make it a {kind} pool"
            )
        client.update_work_pool(name, WorkPoolUpdate(base_job_template=template, description=description))
    return name
