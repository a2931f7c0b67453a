"""What every part of the tracker shares: how a store that cannot answer is reported, the
scenario's experiment, batched writes, and the code version a job records."""

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

from fedsilo.errors import FedsiloError, RegistryUnavailable
from fedsilo.scenario import Scenario
from fedsilo.tracking.names import DOMAIN, KIND, KIND_TAG

# What an MLflow store that cannot answer raises: MLflow wraps its HTTP failures in MlflowException;
# artifact downloads may raise requests' errors, which are OSErrors.
STORE_ERRORS = (MlflowException, OSError)
_BATCH_LIMIT = 100  # MLflow accepts at most 100 params per log_batch call


def says_not_found(exc: MlflowException) -> bool:
    """No such run, registered model or alias (MLflow reports a missing alias as a bad parameter)."""
    if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
        return True
    text = str(exc).lower()
    return exc.error_code == "INVALID_PARAMETER_VALUE" and "alias" in text and "not found" in text


@contextmanager
def reading(what: str, not_found: FedsiloError | None = None) -> Iterator[None]:
    """Raise RegistryUnavailable ("`what` could not be read") when the store cannot answer, or
    `not_found` when it answers that the thing does not exist. Other errors pass unchanged."""
    try:
        yield
    except STORE_ERRORS as exc:
        if not_found is not None and isinstance(exc, MlflowException) and says_not_found(exc):
            raise not_found from exc
        raise RegistryUnavailable(f"{what} could not be read ({exc})") from exc


def ensure_experiment(client: MlflowClient, scenario: Scenario) -> str:
    """The id of the scenario's experiment, created with its domain and kind tags if missing
    (by a job, or by the stack's mlflow-users service before any job has run)."""
    name = scenario.experiment_name
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, tags={DOMAIN: scenario.domain, **KIND})
        except MlflowException:  # created meanwhile by another process
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, KIND_TAG, KIND[KIND_TAG])
    return experiment.experiment_id


def metrics(values: dict[str, float], step: int, model_id: str | None = None) -> list[Metric]:
    """`values` as MLflow metrics at `step` (the round), linked to a logged model when given."""
    stamp = int(time.time() * 1000)
    return [Metric(k, float(v), stamp, step, model_id=model_id) for k, v in values.items()]


def log_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    """Log `params` in batches of MLflow's limit, each value cut to MLflow's 6000 characters."""
    entities = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(entities), _BATCH_LIMIT):
        client.log_batch(run_id, params=entities[start : start + _BATCH_LIMIT])


def package_version(package: str) -> str:
    return version(package)


def code_commit() -> str | None:
    """The commit of the running code: FEDSILO_GIT_COMMIT (set in images at build time), else the
    git checkout fedsilo is imported from, else None."""
    if os.environ.get("FEDSILO_GIT_COMMIT"):
        return os.environ["FEDSILO_GIT_COMMIT"]
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def scenario_yaml(scenario: Scenario) -> str:
    """The resolved scenario as YAML, loadable again by `fedsilo run`."""
    header = "# The resolved scenario of an MLflow-recorded job. Rerun: fedsilo run THIS_FILE\n"
    return header + yaml.safe_dump(scenario.model_dump(mode="json"), sort_keys=False)
