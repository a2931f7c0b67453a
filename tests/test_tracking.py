"""The MLflow tracker's write side and registry, on a temporary store: the layout of a job (also
beside a run the caller has active), the champion lookup and the registry decisions of real jobs."""

from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from fedsilo.errors import RegistryUnavailable
from fedsilo.messages import DataSummary
from fedsilo.scenario import load_scenario
from fedsilo.tracking import FederationTracker
from tests.conftest import REPO

FIVE_LABELS = "data.labels=[cardiology, gastroenterology, neurology, orthopedics, pulmonology]"
SILOS = ("clinic-a", "clinic-b")


def smoke(*overrides: str):
    return load_scenario(REPO / "scenarios" / "smoke.yaml", list(overrides))


def model_files(folder: Path) -> tuple[str, dict[str, str]]:
    """A stand-in weights file and strategy state: the tracker only moves their bytes."""
    folder.mkdir(exist_ok=True)
    weights, state = folder / "global.safetensors", folder / "strategy_state.safetensors"
    weights.write_bytes(b"weights")
    state.write_bytes(b"state")
    return str(weights), {state.name: str(state)}


def silo_metrics(round_index: int, absent: tuple[str, ...] = ()) -> dict[str, dict[str, float]]:
    """Round metrics per silo: accuracy 0.5 + r/10 (+ 0.05 for clinic-b); `absent` did not answer."""
    return {
        silo: {
            "local_accuracy": 0.5 + round_index / 10 + 0.05 * i,
            "global_accuracy": 0.5 + round_index / 10 + 0.05 * i,
            "answered": float(silo not in absent),
        }
        for i, silo in enumerate(SILOS)
    }


def record_rounds(tracker: FederationTracker, folder: Path, rounds: int, absent=()) -> list[str]:
    """Log rounds 0..rounds as the coordinator does (model, then metrics linked to it)."""
    weights, extra = model_files(folder)
    model_ids = []
    for r in range(rounds + 1):
        model_id = tracker.log_global_model(r, weights, {"labels": ["a", "b"]}, extra)
        job = {"global_accuracy": 0.6 + r / 10, "round_seconds": 1.0 + r}
        tracker.log_round(r, job, silo_metrics(r, absent if r else ()), model_id)
        model_ids.append(model_id)
    return model_ids


def test_a_job_is_recorded_in_the_layout_beside_an_active_run(mlflow_store, tmp_path):
    scenario = smoke()
    with mlflow.start_run(run_name="the caller's own") as active:
        tracker = FederationTracker(scenario, "layout")
        parent_id = tracker.start()
        tracker.log_data(DataSummary("clinic-a", {"x": 3, "y": 1}, {"x": 1}, version="abc123"))
        (_, last_model) = record_rounds(tracker, tmp_path / "model", rounds=1)
        matrix = pd.DataFrame(
            {"clinic-a": [0.9], "clinic-b": [0.7]}, index=pd.Index(["global"], name="model")
        )
        tracker.log_silo_matrix(matrix, "accuracy")
        tracker.set_tags({"fedsilo.note": 1}, silo="clinic-b")
        assert tracker.register(last_model, True, "first") == "1"
        tracker.finish()
        assert mlflow.active_run().info.run_id == active.info.run_id  # neither used nor ended
    client = MlflowClient(mlflow_store)
    assert not client.get_run(active.info.run_id).data.metrics  # nothing written to it
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "layout"
    assert parent.data.tags["fedsilo.role"] == "federation" and parent.data.tags["fedsilo.job"] == "layout"
    assert (
        parent.data.tags["fedsilo.registered_version"] == "1"
        and parent.data.tags["fedsilo.champion"] == "True"
    )
    assert parent.data.params["name"] == "smoke" and parent.data.params["federation.rounds"] == "2"
    history = client.get_metric_history(parent_id, "global_accuracy")
    assert [(m.step, m.value) for m in history] == [(0, 0.6), (1, 0.7)]
    paths = {a.path for a in client.list_artifacts(parent_id)} | {
        a.path for a in client.list_artifacts(parent_id, "plots")
    }
    assert {
        "scenario.yaml",
        "silo_matrix.json",
        "plots/accuracy_by_round.png",
        "plots/silo_matrix.png",
    } <= paths
    experiment = client.get_experiment_by_name("smoke")
    silos = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    by_silo = {run.data.tags["fedsilo.silo"]: run for run in silos}
    assert set(by_silo) == set(SILOS) and all(r.info.status == "FINISHED" for r in silos)
    assert by_silo["clinic-a"].data.params == {"num_train": "4", "num_test": "1", "data_version": "abc123"}
    assert by_silo["clinic-a"].inputs.dataset_inputs[0].dataset.name == "smoke/clinic-a"
    assert by_silo["clinic-b"].data.metrics["global_accuracy"] == pytest.approx(0.65)
    assert by_silo["clinic-b"].data.tags["fedsilo.note"] == "1"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    model = client.get_logged_model(last_model)
    assert (
        model.tags["fedsilo.round"] == "1"
        and model.name == "smoke-global"
        and model.source_run_id == parent_id
    )
    assert str(client.get_model_version_by_alias("smoke-global", "champion").version) == "1"


def test_registering_without_earning_it_keeps_the_alias(mlflow_store, tmp_path):
    tracker = FederationTracker(smoke(), "two")
    tracker.start()
    first, second = record_rounds(tracker, tmp_path / "m", rounds=1)
    assert tracker.register(first, True, "first") == "1"
    assert tracker.register(second, False, "worse") == "2"
    assert tracker.champion()[0] == "1"
    tags = MlflowClient(mlflow_store).get_run(tracker.parent_id).data.tags
    assert tags["fedsilo.champion"] == "False" and tags["fedsilo.champion_reason"] == "worse"


def test_the_champion_weights_come_from_its_logged_model(mlflow_store, tmp_path):
    tracker = FederationTracker(smoke(), "weights")
    tracker.start()
    (model_id,) = record_rounds(tracker, tmp_path / "m", rounds=0)
    assert tracker.champion_weights() is None
    tracker.register(model_id, True, "first")
    version, path = tracker.champion_weights(adapter=True)  # no adapters logged: its weights
    assert (
        version == "1" and Path(path).name == "global.safetensors" and Path(path).read_bytes() == b"weights"
    )


def test_no_champion_only_when_the_registry_says_so(mlflow_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    tracker = FederationTracker(smoke(), "job")
    assert tracker.champion() is None  # no registered model at all
    MlflowClient(mlflow_store).create_registered_model("smoke-global")
    assert tracker.champion() is None  # a model, but no alias
    unreachable = FederationTracker(smoke(), "job", tracking_uri="http://127.0.0.1:9")  # nothing listens
    with pytest.raises(RegistryUnavailable, match="could not say"):
        unreachable.champion()
    with pytest.raises(RegistryUnavailable, match="could not say"):
        unreachable.champion_weights()


def test_a_champion_whose_model_cannot_be_read_is_unavailable_not_absent(mlflow_store):
    class PointsAtAMissingModel(FederationTracker):
        def champion(self):
            return "3", "models:/m-0000000000000000000000000000dead"

    with pytest.raises(RegistryUnavailable, match="champion v3 could not be read"):
        PointsAtAMissingModel(smoke(), "job").champion_weights()


def test_unrelated_errors_are_not_taken_for_an_outage(mlflow_store, monkeypatch):
    tracker = FederationTracker(smoke(), "job")

    def broken(*args, **kwargs):
        raise KeyError("a bug, not the registry")

    monkeypatch.setattr(tracker.client, "get_model_version_by_alias", broken)
    with pytest.raises(KeyError):
        tracker.champion_weights()


# -- the registry decisions of real jobs (the engine, silos in this process) ----------------------


class RegistryDownAtTheDecision(FederationTracker):
    """A tracking server that stops answering registry lookups once the job has started."""

    def champion(self):
        def refuse(*args, **kwargs):
            raise MlflowException("API request failed: Max retries exceeded (Connection refused)")

        self.client.get_model_version_by_alias = refuse
        return super().champion()


def job(name, *overrides, tracker_class=FederationTracker):
    from fedsilo.engine import run_job
    from fedsilo.transport import InProcess

    scenario = smoke("federation.rounds=1", *overrides)
    return run_job(scenario, InProcess(), job=name, tracker=tracker_class(scenario, name))


def champion_version(uri: str) -> str:
    return str(MlflowClient(uri).get_model_version_by_alias("smoke-global", "champion").version)


def test_a_registry_outage_at_the_decision_keeps_the_champion(mlflow_store):
    first = job("first")
    assert first.champion and champion_version(mlflow_store) == "1"
    second = job("second", tracker_class=RegistryDownAtTheDecision)
    assert second.registered_version == "2" and not second.champion
    assert (
        "could not say which version" in second.champion_reason and "champion kept" in second.champion_reason
    )
    assert champion_version(mlflow_store) == "1"
    tags = MlflowClient(mlflow_store).get_run(second.parent_run_id).data.tags
    assert tags["fedsilo.champion"] == "False" and "Connection refused" in tags["fedsilo.champion_reason"]


def test_an_incompatible_champion_is_replaced_only_when_asked(mlflow_store):
    job("five-labels", FIVE_LABELS)
    six = FIVE_LABELS.replace("]", ", dermatology]")
    kept = job("six-labels", six)
    assert not kept.champion and "replace_incompatible_champion" in kept.champion_reason
    assert champion_version(mlflow_store) == "1"
    replaced = job("six-labels-again", six, "retraining.replace_incompatible_champion=true")
    assert replaced.champion and champion_version(mlflow_store) == "3"


HIDE_FEDSILO = """
import sys
sys.meta_path = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path_hooks = [h for h in sys.path_hooks if "__editable__" not in repr(h)]
sys.path = [p for p in sys.path if p not in ("", {repo!r}) and "__editable__" not in p]
sys.path_importer_cache.clear()
try:
    import fedsilo  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("fedsilo is still importable: the test would prove nothing")
import mlflow
model = mlflow.pyfunc.load_model({uri!r})
print("PREDICTED", model.predict(["Pt 40M c/o palpitations, elevated troponin."]))
"""


def test_the_registered_model_loads_and_predicts_without_fedsilo_installed(mlflow_store, tmp_path):
    import os
    import subprocess
    import sys

    result = job("served")
    version = MlflowClient(mlflow_store).get_model_version("smoke-global", result.registered_version)
    script = HIDE_FEDSILO.format(repo=str(REPO), uri=version.source)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = os.environ | {"MLFLOW_TRACKING_URI": mlflow_store, "PYTHONPATH": ""}
    run = subprocess.run([sys.executable, "-c", script], cwd=outside, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "PREDICTED ['" in run.stdout
