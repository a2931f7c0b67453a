"""The federated-training flow end to end, on a real Prefect server and a temporary MLflow store."""

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from prefect import flow

from fedsilo.pretrain import pretrain_cnn
from fedsilo.scenario import load_scenario
from fedsilo.silo import release_participants
from fedsilo.tracking import metric_by_round
from tests.conftest import shared_file

REPO = Path(__file__).resolve().parents[1]


def run_flow(scenario):
    from pipelines.flows import federated_training

    try:
        return federated_training(scenario, job_name=f"{scenario.name}-test")
    finally:
        release_participants()


def prefect_progress(key: str) -> float:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return artifact.data


def prefect_events(prefix: str, wait: float = 15) -> list[str]:
    """Names of the events the Prefect server holds under `prefix` (they arrive asynchronously)."""
    from prefect.client.orchestration import get_client

    deadline, names = time.monotonic() + wait, []
    with get_client(sync_client=True) as client:
        while not names and time.monotonic() < deadline:
            found = client.request("POST", "/events/filter", json={"filter": {"event": {"prefix": [prefix]}}})
            names = [event["event"] for event in found.json()["events"]]
            time.sleep(0.5)
    return names


@pytest.mark.slow
def test_smoke_job_writes_the_mlflow_layout(prefect_server, mlflow_store, tmp_path):
    scenario = load_scenario(REPO / "scenarios" / "smoke.yaml")
    with mlflow.start_run(run_name="caller's own run") as outer:  # must be left alone
        result = run_flow(scenario)
        assert mlflow.active_run().info.run_id == outer.info.run_id
    assert not list((tmp_path / "jobs").rglob("*.safetensors"))  # MLflow holds every global model
    client = MlflowClient(mlflow_store)
    experiment = client.get_experiment_by_name("smoke")
    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags["fedsilo.role"] == "federation" and parent.info.status == "FINISHED"
    assert parent.data.params["federation.rounds"] == "2"
    history = metric_by_round("smoke", tracking_uri=mlflow_store)  # the latest job, in round order
    assert [m.step for m in history] == [0, 1, 2]
    assert history[-1].value == pytest.approx(result.final_accuracy)
    for key in ("global_f1_macro", "global_loss", "round_seconds", "bytes_exchanged"):
        assert [m.step for m in client.get_metric_history(parent.info.run_id, key)] == (
            [0, 1, 2] if key.startswith("global") else [1, 2]
        )

    silos = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert sorted(r.data.tags["fedsilo.silo"] for r in silos) == ["clinic-a", "clinic-b"]
    for run in silos:
        assert run.data.tags["fedsilo.role"] == "silo"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "local_accuracy")] == [1, 2]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "global_accuracy")] == [0, 1, 2]
        assert run.data.metrics["num_examples"] == 30
        (dataset,) = run.inputs.dataset_inputs
        assert "label" in dataset.dataset.schema and "text" not in dataset.dataset.schema  # counts, no rows

    models = client.search_logged_models([experiment.experiment_id])
    assert len(models) == 3
    for model in models:  # each round's global metrics are linked to that round's model
        linked = {m.key: m.step for m in model.metrics}
        assert linked["global_accuracy"] == int(model.tags["fedsilo.round"])
    champion = client.get_model_version_by_alias("smoke-global", "champion")
    assert str(champion.version) == result.registered_version == "1"
    assert "plots/accuracy_by_round.png" in [
        a.path for a in client.list_artifacts(parent.info.run_id, "plots")
    ]

    loaded = mlflow.pyfunc.load_model(champion.source)
    labels = loaded.predict(["Pt 40M c/o palpitations, elevated troponin."])
    assert labels[0] in {"cardiology", "pulmonology", "gastroenterology", "neurology", "orthopedics"}

    assert prefect_progress("smoke-progress") == 100
    assert "fedsilo.champion.moved" in prefect_events("fedsilo.champion.")

    second = run_flow(scenario)  # same data, same seed: the same score keeps or takes the alias
    assert second.registered_version == "2" and ">= champion v1's" in second.champion_reason, (
        second.champion_reason
    )


@pytest.mark.slow
def test_imaging_job_improves_on_the_pretrained_cnn(prefect_server, mlflow_store, tmp_path):
    npz = shared_file("pneumoniamnist", "pneumoniamnist.npz")
    checkpoint = pretrain_cnn(tmp_path / "cnn.safetensors", epochs=2)
    assert checkpoint.accuracy > 0.9
    scenario = load_scenario(
        REPO / "scenarios" / "medical-imaging.yaml",
        [f"data.source.path={npz}", f"model.source={checkpoint.path}", "tracking.log_models=false"],
        rounds=2,
    )
    result = run_flow(scenario)
    assert result.initial_accuracy < 0.65 < result.final_accuracy


def test_a_champion_that_cannot_be_read_is_kept(mlflow_store, tmp_path):
    from fedsilo.engine import champion
    from fedsilo.tracking import FederationTracker

    class RegistryPointsAtAMissingModel(FederationTracker):
        def champion(self):
            return "3", "models:/m-0000000000000000000000000000dead"

    scenario = load_scenario(REPO / "scenarios" / "smoke.yaml")
    tracker = RegistryPointsAtAMissingModel(scenario, "job")
    promote, reason = champion.decide(scenario, tracker, None, [], None, None)
    assert not promote and "champion v3 could not be read" in reason


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`fedsilo` in a fresh process whose MLflow store and job folder are under `cwd`."""
    command = [sys.executable, "-m", "fedsilo.cli", *args]
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db", "FEDSILO_WORKDIR": f"{cwd}/jobs"}
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env)


def test_cli_reports_missing_data_without_a_traceback(tmp_path):
    imaging = str(REPO / "scenarios" / "medical-imaging.yaml")
    absent = f"data.source.path={tmp_path}/absent.npz"
    run = run_cli(
        "run",
        imaging,
        "--set",
        "model.source=random",
        "--set",
        absent,
        "--set",
        "data.source.download=null",
        cwd=tmp_path,
    )
    assert run.returncode == 1
    assert "absent.npz" in run.stderr and "data.source.path" in run.stderr
    assert "Traceback" not in run.stderr


def test_cli_reports_a_missing_cnn_checkpoint_with_the_command_to_make_it(tmp_path):
    npz = shared_file("pneumoniamnist", "pneumoniamnist.npz")
    run = run_cli(
        "run",
        str(REPO / "scenarios" / "medical-imaging.yaml"),
        "--set",
        f"data.source.path={npz}",
        cwd=tmp_path,
    )
    assert run.returncode == 1 and "fedsilo pretrain --output" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_silo_refuses_global_weights_whose_checksum_differs(prefect_server, mlflow_store, tmp_path):
    from dataclasses import replace

    from fedsilo.engine.start import settle_data
    from fedsilo.silo import initial_state, summarize
    from fedsilo.steps import Evaluate
    from fedsilo.trust.audit import AuditTrail
    from fedsilo.trust.credentials import ephemeral, local_gate
    from fedsilo.trust.signer import Signer
    from fedsilo.weights import write_state
    from pipelines.silo_flow import answer
    from pipelines.steps import StepRequest

    scenario = load_scenario(REPO / "scenarios" / "smoke.yaml")
    scenario, _ = settle_data(scenario, [summarize(scenario, "clinic-a")])
    good = write_state(initial_state(scenario, ()), str(tmp_path / "global.safetensors"))
    tampered = Evaluate(replace(good, sha256="0" * 64), "round-0")
    keys = ephemeral(["clinic-a"])
    signer = Signer(keys.coordinator, keys.roster, "job", AuditTrail(None, "coordinator"))
    sent = signer.request(scenario, tampered, "clinic-a", 60)
    gate = local_gate(keys, "clinic-a")
    request = StepRequest(request="r1", token=sent.token, label=tampered.label)
    reply = flow(name="one-silo-step")(answer)(gate, "clinic-a", request)  # as in the silo's job run
    release_participants()
    verdict = signer.accept(sent, reply.token)
    assert reply.silo == "clinic-a" and verdict.outcome == "failed"  # no score for weights it cannot trust
    assert "sha256" in verdict.reason and "global.safetensors" in verdict.reason


@pytest.mark.slow
def test_cli_runs_scaffold_with_personal_layers_and_ditto(tmp_path):
    run = run_cli(
        "run",
        str(REPO / "scenarios" / "smoke.yaml"),
        "--rounds",
        "2",
        "--set",
        "federation.strategy=scaffold",
        "--set",
        "federation.personal_layers=[classifier.*]",
        "--set",
        "evaluation.personalization=ditto",
        "--set",
        "tracking.log_models=false",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Personalized (ditto, lambda 0.1 on each" in run.stdout and "clinic-a" in run.stdout
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (job,) = client.search_runs(
        [client.get_experiment_by_name("smoke").experiment_id], "tags.`fedsilo.role` = 'federation'"
    )
    assert job.data.params["federation.strategy"] == "scaffold"
    assert job.data.params["federation.personal_layers"] == "['classifier.*']"
    assert 0 <= job.data.metrics["personalized_accuracy"] <= 1
