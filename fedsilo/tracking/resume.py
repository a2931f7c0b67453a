"""Where an interrupted job goes on from, read back from MLflow alone: its unfinished runs, its last
completed round (global model logged and `global_accuracy` on the parent run) and the rounds so far.

Raises JobNotFound when there is no job to take up, RegistryUnavailable when the store cannot
answer; any other error passes unchanged (a retry must not start a fresh job over a bug)."""

from dataclasses import dataclass

from mlflow import MlflowClient

from fedsilo.errors import JobNotFound
from fedsilo.records import ResumePoint
from fedsilo.scenario import Scenario
from fedsilo.tracking import names
from fedsilo.tracking.packaging import logged_model_files
from fedsilo.tracking.queries import latest_job_run
from fedsilo.tracking.runs import Curves
from fedsilo.tracking.store import reading


@dataclass(frozen=True)
class JobRunIds:
    """The runs of a recorded job: its experiment, parent run and silo runs (silo -> run id)."""

    experiment_id: str
    parent_id: str
    silo_runs: dict[str, str]


def unfinished_job(client: MlflowClient, scenario: Scenario, job: str) -> JobRunIds:
    """The runs of the latest job named `job`, which must not have finished and must have a run
    for every silo of `scenario`."""
    parent = latest_job_run(client, scenario.experiment_name, job)
    run_id, experiment_id = parent.info.run_id, parent.info.experiment_id
    if parent.info.status == "FINISHED":
        raise JobNotFound(
            f"job {job!r} already finished (run {run_id}); rerun it with `fedsilo run --from-run {run_id}`"
        )
    with reading(f"the silo runs of job {job!r}"):
        children = client.search_runs([experiment_id], f"tags.`{names.PARENT}` = '{run_id}'")
    silo_runs = {
        run.data.tags[names.SILO]: run.info.run_id for run in children if names.SILO in run.data.tags
    }
    absent = sorted(set(scenario.silo_names()) - set(silo_runs))
    if absent:
        raise JobNotFound(f"job {job!r} has no MLflow run for silo(s) {', '.join(absent)}")
    return JobRunIds(experiment_id, run_id, silo_runs)


def resume_point(client: MlflowClient, ids: JobRunIds, job: str, rounds: int) -> tuple[ResumePoint, Curves]:
    """The job's last completed round (its model's weights, or LoRA adapters, and strategy state)
    with the rounds 0..last as recorded, and the curves its plots go on from."""
    by_round = completed_rounds(client, ids)
    if not by_round:
        raise JobNotFound(
            f"job {job!r} has no completed round with a logged model to resume from "
            "(it needs tracking.log_models: true)"
        )
    last = max(by_round)
    weights, state, adapter = logged_model_files(f"models:/{by_round[last]}")
    curves = read_curves(client, ids, last)
    seconds = _series(client, ids.parent_id, names.ROUND_SECONDS, last)
    history = [curves.record(r, rounds, seconds.get(r, 0.0)) for r in range(last + 1)]
    # a LoRA job goes on from its adapters, not the merged model
    return ResumePoint(last, adapter or weights, state, by_round[last], history), curves


def completed_rounds(client: MlflowClient, ids: JobRunIds) -> dict[int, str]:
    """round -> model_id of each round with its global model logged and `global_accuracy` recorded
    on the parent run (logged after every silo's metrics of that round)."""
    with reading(f"the logged models of job run {ids.parent_id}"):
        models = client.search_logged_models(
            [ids.experiment_id], filter_string=f"source_run_id = '{ids.parent_id}'"
        )
        recorded = {m.step for m in client.get_metric_history(ids.parent_id, names.GLOBAL_ACCURACY)}
    by_round = {int(m.tags[names.ROUND]): m.model_id for m in models if names.ROUND in m.tags}
    return {r: model_id for r, model_id in by_round.items() if r in recorded}


def read_curves(client: MlflowClient, ids: JobRunIds, last: int) -> Curves:
    """The job's global accuracy and each silo's local/global accuracy and `answered`, rounds 0..last."""
    keys = (names.LOCAL_ACCURACY, names.GLOBAL_ACCURACY, names.ANSWERED)
    return Curves(
        job=_series(client, ids.parent_id, names.GLOBAL_ACCURACY, last),
        validation=_series(client, ids.parent_id, names.VALIDATION_ACCURACY, last),
        silos={
            silo: {key: _series(client, run_id, key, last) for key in keys}
            for silo, run_id in ids.silo_runs.items()
        },
    )


def _series(client: MlflowClient, run_id: str, key: str, last: int) -> dict[int, float]:
    with reading(f"metric {key} of run {run_id}"):
        history = client.get_metric_history(run_id, key)
    return {m.step: m.value for m in history if m.step <= last}
