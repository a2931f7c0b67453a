"""The tracker's read side on a temporary store: `fedsilo compare`'s tables, recorded scenarios,
and taking up an interrupted job (resume), with the errors each raises."""

from pathlib import Path

import pytest
from mlflow import MlflowClient

from fedsilo.errors import JobNotFound, RegistryUnavailable
from fedsilo.scenario import load_scenario_text
from fedsilo.tracking import (
    FederationTracker,
    compare,
    job_scenario,
    metric_by_round,
    recorded_scenario,
    silo_matrices,
)
from tests.test_tracking import SILOS, record_rounds, smoke

NOWHERE = "http://127.0.0.1:9"  # nothing listens there


def recorded_job(tmp_path, name: str, rounds: int = 1, absent=(), status: str = "FAILED") -> tuple:
    """A job of the smoke scenario with rounds 0..rounds recorded, ended with `status`."""
    tracker = FederationTracker(smoke(), name)
    tracker.start()
    model_ids = record_rounds(tracker, tmp_path / name, rounds, absent)
    tracker.finish(status)
    return tracker, model_ids


def test_compare_lists_each_silo_and_the_union_of_the_latest_jobs(mlflow_store, tmp_path):
    recorded_job(tmp_path, "older", rounds=1, status="FINISHED")
    recorded_job(tmp_path, "newer", rounds=2, status="FINISHED")
    table = compare("smoke", jobs=2)
    assert list(table["job"]) == ["newer"] * 3 + ["older"] * 3
    assert list(table["silo"]) == [*SILOS, "(all silos)"] * 2
    newer = table[table["job"] == "newer"].set_index("silo")
    assert newer.loc["clinic-b", "global_accuracy"] == pytest.approx(0.75)  # round 2's
    assert newer.loc["(all silos)", "global_accuracy"] == pytest.approx(0.8)
    assert list(compare("smoke")["job"].unique()) == ["newer"]


def test_silo_matrices_come_back_for_the_jobs_that_logged_one(mlflow_store, tmp_path):
    import pandas as pd

    tracker, _ = recorded_job(tmp_path, "with-matrix", rounds=0)
    matrix = pd.DataFrame({"clinic-a": [0.9], "clinic-b": [0.7]}, index=pd.Index(["global"], name="model"))
    tracker.log_silo_matrix(matrix, "accuracy")
    recorded_job(tmp_path, "without", rounds=0)
    matrices = silo_matrices("smoke", jobs=2)
    assert list(matrices) == [f"with-matrix (run {tracker.parent_id[:8]})"]
    pd.testing.assert_frame_equal(next(iter(matrices.values())), matrix)


def test_metric_by_round_reads_the_latest_job_in_round_order(mlflow_store, tmp_path):
    recorded_job(tmp_path, "job", rounds=2)
    assert [(m.step, m.value) for m in metric_by_round("smoke")] == [(0, 0.6), (1, 0.7), (2, 0.8)]
    assert [m.value for m in metric_by_round("smoke", "round_seconds")] == [1.0, 2.0, 3.0]


def test_the_recorded_scenario_loads_again(mlflow_store, tmp_path):
    tracker, _ = recorded_job(tmp_path, "origin", rounds=0)
    job, text = recorded_scenario(tracker.parent_id)
    assert job == "origin" and load_scenario_text(text, "recorded") == smoke()
    assert job_scenario("smoke", "origin") == text


def test_what_is_not_recorded_is_job_not_found(mlflow_store, tmp_path):
    with pytest.raises(JobNotFound, match="no MLflow experiment named 'nowhere'"):
        compare("nowhere")
    tracker, _ = recorded_job(tmp_path, "job", rounds=0)
    with pytest.raises(JobNotFound, match="no job named 'other'"):
        job_scenario("smoke", "other")
    with pytest.raises(JobNotFound, match="does not exist"):
        recorded_scenario("0" * 32)
    silo_run = tracker.runs.silo_runs["clinic-a"]
    with pytest.raises(JobNotFound, match="holds no recorded scenario.yaml"):
        recorded_scenario(silo_run)
    MlflowClient(mlflow_store).create_experiment("empty")
    with pytest.raises(JobNotFound, match="has no federated job"):
        metric_by_round("empty")


def test_an_unreachable_store_is_unavailable_never_absent(mlflow_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    for query in (
        lambda: compare("smoke", tracking_uri=NOWHERE),
        lambda: silo_matrices("smoke", tracking_uri=NOWHERE),
        lambda: metric_by_round("smoke", tracking_uri=NOWHERE),
        lambda: recorded_scenario("0" * 32, NOWHERE),
        lambda: job_scenario("smoke", "job", NOWHERE),
        lambda: FederationTracker(smoke(), "job", tracking_uri=NOWHERE).attach(),
    ):
        with pytest.raises(RegistryUnavailable, match="could not be read"):
            query()


# -- resume: attach() -------------------------------------------------------------------------------


def test_attach_takes_up_an_interrupted_job_where_it_stopped(mlflow_store, tmp_path):
    first, model_ids = recorded_job(tmp_path, "interrupted", rounds=2, absent=("clinic-b",))
    tracker = FederationTracker(smoke(), "interrupted")
    point = tracker.attach()
    assert tracker.parent_id == first.parent_id and tracker.runs.silo_runs == first.runs.silo_runs
    assert (point.round_index, point.model_id) == (2, model_ids[2])
    assert Path(point.weights_path).read_bytes() == b"weights"
    assert Path(point.strategy_state_path).name == "strategy_state.safetensors"
    assert [r.global_accuracy for r in point.history] == [0.6, 0.7, 0.8]
    assert [r.missing for r in point.history] == [[], ["clinic-b"], ["clinic-b"]]  # its `answered` was 0
    assert point.history[1].silo_global == {"clinic-a": 0.6, "clinic-b": pytest.approx(0.65)}
    assert point.history[2].seconds == 3.0 and point.history[0].rounds == 2
    client = MlflowClient(mlflow_store)
    assert {client.get_run(r).info.status for r in [tracker.parent_id, *tracker.runs.silo_runs.values()]} == {
        "RUNNING"
    }
    tracker.log_round(3, {"global_accuracy": 0.9}, {})
    assert sorted(tracker.runs.curves.job) == [0, 1, 2, 3]  # the plot goes on from the recorded rounds


def test_attach_goes_on_from_the_last_round_recorded_whole(mlflow_store, tmp_path):
    tracker, model_ids = recorded_job(tmp_path, "cut", rounds=1)
    weights = tmp_path / "cut" / "global.safetensors"
    tracker.log_global_model(2, str(weights), {}, {})  # interrupted before round 2's metrics
    point = FederationTracker(smoke(), "cut").attach()
    assert (point.round_index, point.model_id, len(point.history)) == (1, model_ids[1], 2)


def test_attach_raises_job_not_found_when_there_is_nothing_to_take_up(mlflow_store, tmp_path):
    with pytest.raises(JobNotFound, match="no job named 'ghost'"):
        FederationTracker(smoke(), "ghost").attach()
    recorded_job(tmp_path, "done", rounds=0, status="FINISHED")
    with pytest.raises(JobNotFound, match="already finished"):
        FederationTracker(smoke(), "done").attach()
    unlogged = FederationTracker(smoke(), "unlogged")
    unlogged.start()
    unlogged.log_round(0, {"global_accuracy": 0.5}, {}, None)  # tracking.log_models: false
    with pytest.raises(JobNotFound, match="no completed round"):
        FederationTracker(smoke(), "unlogged").attach()
    partial, _ = recorded_job(tmp_path, "partial", rounds=0)
    MlflowClient(mlflow_store).delete_run(partial.runs.silo_runs["clinic-b"])
    with pytest.raises(JobNotFound, match="no MLflow run for silo"):
        FederationTracker(smoke(), "partial").attach()


def test_an_unrelated_error_in_attach_is_not_taken_for_a_missing_job(mlflow_store, tmp_path, monkeypatch):
    recorded_job(tmp_path, "job", rounds=0)
    tracker = FederationTracker(smoke(), "job")

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(tracker.client, "search_logged_models", broken)
    with pytest.raises(KeyError):
        tracker.attach()


def test_compare_shows_the_model_each_silo_keeps_beside_its_alone_model(mlflow_store, tmp_path):
    tracker = FederationTracker(smoke(), "kept")
    tracker.start()
    record_rounds(tracker, tmp_path / "kept", 1, ())
    per_silo = {
        "clinic-a": {"kept_accuracy": 0.8, "alone_accuracy": 0.7, "gain_from_joining": 0.1},
        "clinic-b": {"kept_accuracy": 0.6, "alone_accuracy": 0.6, "gain_from_joining": 0.0},
    }
    union = {"kept_accuracy": 0.7, "alone_accuracy": 0.65, "gain_from_joining": 0.05}
    tracker.log_round(1, union, per_silo, None)
    tracker.set_tags({"fedsilo.kept_model": "global"}, silo="clinic-a")
    tracker.set_tags({"fedsilo.kept_model": "alone"}, silo="clinic-b")
    tracker.finish("FINISHED")
    table = compare("smoke").set_index("silo")
    assert table.loc["clinic-a", "kept_model"] == "global" and table.loc["clinic-b", "kept_model"] == "alone"
    assert table.loc["clinic-a", "gain_from_joining"] == pytest.approx(0.1)
    assert table.loc["(all silos)", "alone_accuracy"] == pytest.approx(0.65)
