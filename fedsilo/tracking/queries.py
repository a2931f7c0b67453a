"""Reading recorded jobs back from MLflow: a job's scenario (rerun, resume), the latest jobs'
per-silo table and silo x silo matrices (`fedsilo compare`), and a metric by round.

Each raises JobNotFound when what it names is not recorded and RegistryUnavailable when the
store cannot answer; any other error passes unchanged."""

import json
import tempfile
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Run

from fedsilo.errors import JobNotFound
from fedsilo.tracking import names
from fedsilo.tracking.store import reading

ALL_SILOS = "(all silos)"


def latest_job_run(client: MlflowClient, experiment: str, job: str) -> Run:
    """The parent run of the latest job named `job` in `experiment`."""
    with reading(f"job {job!r} in MLflow experiment {experiment!r} at {client.tracking_uri}"):
        found = client.get_experiment_by_name(experiment)
        runs = (
            client.search_runs(
                [found.experiment_id],
                f"tags.`{names.JOB}` = '{job}' and tags.`{names.ROLE}` = '{names.FEDERATION}'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
            if found
            else []
        )
    if not runs:
        raise JobNotFound(
            f"no job named {job!r} in MLflow experiment {experiment!r} at {client.tracking_uri}"
        )
    return runs[0]


def recorded_scenario(run_id: str, tracking_uri: str | None = None) -> tuple[str, str]:
    """(job name, scenario YAML text) of a recorded job's parent run."""
    client = MlflowClient(tracking_uri)
    where = f"MLflow run {run_id} at {client.tracking_uri}"
    hint = "name the parent run of a fedsilo job"
    with reading(where, not_found=JobNotFound(f"{where} does not exist; {hint}")):
        run = client.get_run(run_id)
        recorded = names.SCENARIO_FILE in [a.path for a in client.list_artifacts(run_id)]
        if not recorded:
            raise JobNotFound(f"{where} holds no recorded {names.SCENARIO_FILE}; {hint}")
        with tempfile.TemporaryDirectory() as folder:
            text = Path(client.download_artifacts(run_id, names.SCENARIO_FILE, folder)).read_text()
    return _job_name(run), text


def job_scenario(experiment: str, job: str, tracking_uri: str | None = None) -> str:
    """The scenario YAML recorded by the latest job named `job` in `experiment`."""
    run = latest_job_run(MlflowClient(tracking_uri), experiment, job)
    return recorded_scenario(run.info.run_id, tracking_uri)[1]


def latest_jobs(client: MlflowClient, experiment: str, jobs: int) -> tuple[str, list[Run]]:
    """(experiment id, parent runs of its latest `jobs` federated jobs, newest first)."""
    with reading(f"MLflow experiment {experiment!r} at {client.tracking_uri}"):
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise JobNotFound(f"no MLflow experiment named {experiment!r} at {client.tracking_uri}")
        parents = client.search_runs(
            [found.experiment_id],
            f"tags.`{names.ROLE}` = '{names.FEDERATION}'",
            order_by=["attributes.start_time DESC"],
            max_results=jobs,
        )
    return found.experiment_id, parents


def metric_by_round(
    experiment: str, metric: str = names.GLOBAL_ACCURACY, tracking_uri: str | None = None
) -> list[Metric]:
    """The latest job's `metric` points (value, step = round, timestamp), in round order."""
    client = MlflowClient(tracking_uri)
    _, parents = latest_jobs(client, experiment, 1)
    if not parents:
        raise JobNotFound(f"experiment {experiment!r} has no federated job")
    with reading(f"{metric} of job run {parents[0].info.run_id}"):
        points = client.get_metric_history(parents[0].info.run_id, metric)
    return sorted(points, key=lambda m: m.step)


def compare(experiment: str, jobs: int = 1, tracking_uri: str | None = None) -> pd.DataFrame:
    """Per-silo table for the latest `jobs` federated jobs of an experiment, read back from MLflow:
    one row per silo (its last metrics) and one for the union of the silos' test sets."""
    client = MlflowClient(tracking_uri)
    experiment_id, parents = latest_jobs(client, experiment, jobs)
    rows = []
    for parent in parents:
        with reading(f"the silo runs of job run {parent.info.run_id}"):
            children = client.search_runs([experiment_id], f"tags.`{names.PARENT}` = '{parent.info.run_id}'")
        rows += _job_rows(parent, children)
    return pd.DataFrame(rows)


def _job_rows(parent: Run, children: list[Run]) -> list[dict]:
    job = _job_name(parent)
    rows = []
    for child in sorted(children, key=lambda r: r.data.tags.get(names.SILO, "")):
        m = child.data.metrics
        rows.append(
            {
                "job": job,
                "silo": child.data.tags.get(names.SILO),
                "num_examples": m.get("num_examples"),
                "local_accuracy": m.get(names.LOCAL_ACCURACY),
                "global_accuracy": m.get(names.GLOBAL_ACCURACY),
                "train_loss": m.get("train_loss"),
                **_kept_columns(m, child.data.tags.get("fedsilo.kept_model")),
            }
        )
    union = parent.data.metrics.get(names.GLOBAL_ACCURACY)
    rows.append(
        {
            "job": job,
            "silo": ALL_SILOS,
            "num_examples": None,
            "local_accuracy": None,
            "global_accuracy": union,
            "train_loss": None,
            **_kept_columns(parent.data.metrics, None),
        }
    )
    return rows


def _kept_columns(metrics: dict[str, float], kept_model: str | None) -> dict:
    """Is joining worth it: the model a silo keeps, its score, its alone model's, and the gain."""
    figures = ("kept_accuracy", "alone_accuracy", "gain_from_joining")
    return {"kept_model": kept_model} | {name: metrics.get(name) for name in figures}


def silo_matrices(experiment: str, jobs: int = 1, tracking_uri: str | None = None) -> dict[str, pd.DataFrame]:
    """The silo x silo matrix of each of the latest `jobs` jobs that logged one, keyed by
    "<job> (run <id>)" (job names may repeat)."""
    client = MlflowClient(tracking_uri)
    _, parents = latest_jobs(client, experiment, jobs)
    matrices = {}
    for parent in parents:
        run_id = parent.info.run_id
        with reading(f"the silo matrix of job run {run_id}"):
            if names.MATRIX_TABLE not in [a.path for a in client.list_artifacts(run_id)]:
                continue
            with tempfile.TemporaryDirectory() as folder:
                table = json.loads(
                    Path(client.download_artifacts(run_id, names.MATRIX_TABLE, folder)).read_text()
                )
        frame = pd.DataFrame(table["data"], columns=table["columns"]).set_index("model")
        matrices[f"{_job_name(parent)} (run {run_id[:8]})"] = frame
    return matrices


def _job_name(run: Run) -> str:
    return run.data.tags.get(names.JOB, run.info.run_name)
