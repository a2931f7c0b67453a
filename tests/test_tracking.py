"""The MLflow tracker's registry decisions, on a temporary store with the engine's coordinator."""

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from fedsilo.coordinator import Coordinator
from fedsilo.federation import JobPaths
from fedsilo.local import LocalSilos
from fedsilo.scenario import load_scenario
from fedsilo.silo import release_participants
from fedsilo.tracking import FederationTracker
from tests.conftest import REPO

FIVE_LABELS = "data.labels=[cardiology, gastroenterology, neurology, orthopedics, pulmonology]"


class RegistryDownAtTheDecision(FederationTracker):
    """A tracking server that stops answering registry lookups once the job has started."""

    def champion(self):
        def refuse(*args, **kwargs):
            raise MlflowException("API request failed: Max retries exceeded (Connection refused)")

        self.client.get_model_version_by_alias = refuse
        return super().champion()


def job(tmp_path, name, *overrides, tracker_class=FederationTracker):
    scenario = load_scenario(REPO / "scenarios" / "smoke.yaml", ["federation.rounds=1", *overrides])
    tracker = tracker_class(scenario, name)
    tracker.start()
    paths = JobPaths.under(tmp_path / "jobs", name)
    try:
        return Coordinator(scenario, name, LocalSilos(paths), tracker, paths).run()
    finally:
        release_participants()


def champion_version(uri: str) -> str:
    return str(MlflowClient(uri).get_model_version_by_alias("smoke-global", "champion").version)


def test_a_registry_outage_at_the_decision_keeps_the_champion(mlflow_store, tmp_path):
    first = job(tmp_path, "first")
    assert first.champion and champion_version(mlflow_store) == "1"
    second = job(tmp_path, "second", tracker_class=RegistryDownAtTheDecision)
    assert second.registered_version == "2" and not second.champion
    assert (
        "could not say which version" in second.champion_reason and "champion kept" in second.champion_reason
    )
    assert champion_version(mlflow_store) == "1"
    tags = MlflowClient(mlflow_store).get_run(second.parent_run_id).data.tags
    assert tags["fedsilo.champion"] == "False" and "Connection refused" in tags["fedsilo.champion_reason"]


def test_an_incompatible_champion_is_replaced_only_when_asked(mlflow_store, tmp_path):
    job(tmp_path, "five-labels", FIVE_LABELS)
    six = FIVE_LABELS.replace("]", ", dermatology]")
    kept = job(tmp_path, "six-labels", six)
    assert not kept.champion and "replace_incompatible_champion" in kept.champion_reason
    assert champion_version(mlflow_store) == "1"
    replaced = job(tmp_path, "six-labels-again", six, "retraining.replace_incompatible_champion=true")
    assert replaced.champion and champion_version(mlflow_store) == "3"


def test_no_champion_only_when_the_registry_says_so(mlflow_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    tracker = FederationTracker(load_scenario(REPO / "scenarios" / "smoke.yaml"), "job")
    assert tracker.champion() is None  # no registered model at all
    MlflowClient(mlflow_store).create_registered_model("smoke-global")
    assert tracker.champion() is None  # a model, but no alias
    tracker.client = MlflowClient("http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(LookupError, match="could not say"):
        tracker.champion()


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

    result = job(tmp_path, "served")
    version = MlflowClient(mlflow_store).get_model_version("smoke-global", result.registered_version)
    script = HIDE_FEDSILO.format(repo=str(REPO), uri=version.source)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = os.environ | {"MLFLOW_TRACKING_URI": mlflow_store, "PYTHONPATH": ""}
    run = subprocess.run([sys.executable, "-c", script], cwd=outside, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "PREDICTED ['" in run.stdout
