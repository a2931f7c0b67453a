"""Distributed mode on real servers: `prefect server`, `mlflow server` and one worker per silo.

Each silo's worker runs in a folder of its own with only its own data file; the coordinator is
`fedsilo run --mode distributed` in yet another folder and never sees the silos' data.
"""

import contextlib
import subprocess
import threading
import time

import pytest
import torch
from mlflow import MlflowClient
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterName,
    TaskRunFilter,
    TaskRunFilterName,
)
from prefect.events.worker import EventsWorker
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings
from safetensors.torch import load_file

from fedsilo.engine import run_job
from fedsilo.scenario import Scenario, load_scenario
from fedsilo.tracking import model_weights_path
from pipelines.silo_runs import SiloRuns
from tests.conftest import REPO
from tests.engine import Recorder
from tests.stack import BIN, Stack, kill_tree, stop
from tests.test_extension import AsksForSizes, Frozen, check

pytestmark = pytest.mark.slow
SMOKE = REPO / "scenarios" / "smoke.yaml"  # its silos' rows come from the silo_files fixture
# Short limits so a dead silo costs seconds, not the default hour.
FAST_FAULTS = [
    "--set=federation.silo_timeout_seconds=30",
    "--set=federation.silo_retries=0",
    "--set=federation.silo_pickup_seconds=15",
]
SLOW_FIT = "--set=federation.local_steps=150"  # a fit that lasts seconds, long enough to be killed in


def fedsilo(stack: Stack, *args: str, cwd) -> subprocess.Popen:
    command = [str(BIN / "fedsilo"), *args]
    return subprocess.Popen(
        command, env=stack.env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen, seconds: float = 600) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=seconds)
    return process.returncode, out, err


def job_run(client: MlflowClient, job: str):
    (run,) = client.search_runs(
        [client.get_experiment_by_name("smoke").experiment_id],
        f"tags.`fedsilo.role` = 'federation' AND attributes.run_name = '{job}'",
    )
    return run


def final_weights(client: MlflowClient, job: str) -> dict[str, torch.Tensor]:
    run = job_run(client, job)
    models = client.search_logged_models([run.info.experiment_id])
    (last,) = [m for m in models if m.source_run_id == run.info.run_id and m.tags["fedsilo.round"] == "2"]
    return load_file(model_weights_path(f"models:/{last.model_id}"))


def wait_until_running(stack: Stack, job_run: str, task: str, seconds: float = 180) -> None:
    """Wait until the task `task` of the silo's job run `job_run` (`<job>:<silo>`) is running."""
    deadline = time.monotonic() + seconds
    runs = FlowRunFilter(name=FlowRunFilterName(any_=[job_run]))
    tasks = TaskRunFilter(name=TaskRunFilterName(any_=[task]))
    with temporary_settings({PREFECT_API_URL: stack.prefect_api}), get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            found = client.read_task_runs(flow_run_filter=runs, task_run_filter=tasks)
            if found and found[0].state and found[0].state.is_running():
                return
            time.sleep(0.5)
    raise TimeoutError(f"task {task} of {job_run} never ran")


def silo_job_runs(stack: Stack, job: str, silo: str) -> list:
    """The silo's job runs of `job`, with the names of the tasks each ran."""
    with temporary_settings({PREFECT_API_URL: stack.prefect_api}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"{job}:{silo}"]))
        )
        return [
            (
                run,
                {
                    t.name
                    for t in client.read_task_runs(
                        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
                    )
                },
            )
            for run in runs
        ]


def test_distributed_job_equals_the_embedded_one(stack, silo_files, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.mlflow_uri)
    workers = [stack.worker(silo, SMOKE, path) for silo, path in silo_files.items()]
    try:
        code, out, err = finish(
            fedsilo(stack, "run", str(SMOKE), "--mode=distributed", "--job-name=distributed", cwd=tmp_path)
        )
    finally:
        for worker in workers:
            stop(worker)
    assert code == 0, err[-4000:]
    assert "Registered model smoke-global version" in out
    embedded = fedsilo(stack, "run", str(SMOKE), "--job-name=embedded", cwd=tmp_path)
    code, out, err = finish(embedded)
    assert code == 0, err[-4000:]

    client = MlflowClient(stack.mlflow_uri)
    distributed_weights, embedded_weights = (
        final_weights(client, "distributed"),
        final_weights(client, "embedded"),
    )
    assert distributed_weights.keys() == embedded_weights.keys()
    for name, tensor in distributed_weights.items():
        torch.testing.assert_close(tensor, embedded_weights[name], rtol=1e-5, atol=1e-6, msg=name)
    initial = load_file(model_weights_path(f"models:/{_round_model(client, 'distributed', 0)}"))
    assert any(not torch.equal(initial[n], t) for n, t in distributed_weights.items())  # it did train

    run = job_run(client, "distributed")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "global_accuracy")] == [0, 1, 2]
    exchange = [a.path for a in client.list_artifacts(run.info.run_id, "exchange/distributed")]
    assert not [p for p in exchange if p.endswith(".safetensors")]  # weights are cleaned up
    for silo in silo_files:  # one run per silo for the whole job, its data and model built once
        ((job_run_of_silo, tasks),) = silo_job_runs(stack, "distributed", silo)
        assert job_run_of_silo.state.is_completed()
        assert {f"prepare-{silo}", f"fit-{silo}-round-1", f"fit-{silo}-round-2"} <= tasks
        assert len([t for t in tasks if t.startswith(f"evaluate-{silo}-")]) >= 3  # rounds 0, 1, 2
        log = (stack.root / "silos" / silo / "worker.log").read_text()
        assert f"{silo} served {len(tasks)} steps; its data and model were built 1 time(s)" in log


def _round_model(client: MlflowClient, job: str, round_index: int) -> str:
    run = job_run(client, job)
    for model in client.search_logged_models([run.info.experiment_id]):
        if model.source_run_id == run.info.run_id and model.tags["fedsilo.round"] == str(round_index):
            return model.model_id
    raise LookupError(round_index)


def test_a_killed_silo_is_left_out_and_below_min_silos_the_job_fails(stack, silo_files, tmp_path):
    client = MlflowClient(stack.mlflow_uri)
    alive = stack.worker("clinic-a", SMOKE, silo_files["clinic-a"])
    doomed = stack.worker("clinic-b", SMOKE, silo_files["clinic-b"])
    try:
        job = fedsilo(
            stack, "run", str(SMOKE), "--mode=distributed", "--job-name=survives",
            "--set=federation.min_silos=1", *FAST_FAULTS, SLOW_FIT, cwd=tmp_path,
        )  # fmt: skip
        wait_until_running(stack, "survives:clinic-b", "fit-clinic-b-round-1")
        kill_tree(doomed.pid)
        code, out, err = finish(job)
        assert code == 0, err[-4000:]

        run = job_run(client, "survives")
        assert run.data.tags["fedsilo.absent.round_1"] == "clinic-b"
        assert run.data.tags["fedsilo.absent.round_2"] == "clinic-b"  # invited again, still gone
        answered = client.get_metric_history(run.info.run_id, "silos_answered")
        assert [(m.step, m.value) for m in answered] == [(1, 1.0), (2, 1.0)]
        (silo_b,) = client.search_runs(
            [run.info.experiment_id],
            f"tags.`mlflow.parentRunId` = '{run.info.run_id}' AND tags.`fedsilo.silo` = 'clinic-b'",
        )
        assert [m.value for m in client.get_metric_history(silo_b.info.run_id, "answered")] == [0.0, 0.0]
        assert "clinic-b" in out  # the round table names the missing silo

        # Below the minimum: clinic-b comes back, then dies in round 2 of a job that needs both.
        doomed = stack.worker("clinic-b", SMOKE, silo_files["clinic-b"])
        stack.wait_ready("clinic-b")  # a job started sooner may find it absent at prepare and end there
        job = fedsilo(
            stack,
            "run",
            str(SMOKE),
            "--mode=distributed",
            "--job-name=needs-both",
            *FAST_FAULTS,
            SLOW_FIT,
            cwd=tmp_path,
        )
        wait_until_running(stack, "needs-both:clinic-b", "fit-clinic-b-round-2")
        kill_tree(doomed.pid)
        code, out, err = finish(job)
        assert code == 1
        assert "round 2: only 1 of 2 silos answered (min_silos is 2); missing: clinic-b" in err
        assert "Traceback" not in err
        run = job_run(client, "needs-both")
        assert run.info.status == "FAILED" and "missing: clinic-b" in run.data.tags["fedsilo.failure"]
        kept = client.get_metric_history(run.info.run_id, "global_accuracy")
        assert [m.step for m in kept] == [0, 1]  # the completed round stays in MLflow
    finally:
        stop(alive)
        stop(doomed)


def test_prefect_yaml_registers_the_deployment_of_every_shipped_silo(stack, tmp_path):
    import yaml

    from fedsilo.scenario import load_scenario
    from pipelines.deploy import ensure_pool
    from pipelines.silo_flow import pool_name

    silos = {s for path in (REPO / "scenarios").glob("*.yaml") for s in load_scenario(path).silo_names()}
    declared = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    assert {d["name"]: d["work_pool"]["name"] for d in declared} == {s: pool_name(s) for s in silos}

    with temporary_settings({PREFECT_API_URL: stack.prefect_api}):
        for silo in silos:
            ensure_pool(pool_name(silo), "test")
        deploy = subprocess.run(
            [str(BIN / "prefect"), "--no-prompt", "deploy", "--all"],
            env=stack.env | {"FEDSILO_HOME": str(REPO)},
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert deploy.returncode == 0, deploy.stdout[-3000:]
        with get_client(sync_client=True) as client:
            for silo in silos:
                deployment = client.read_deployment_by_name(f"silo-job/{silo}")
                assert deployment.work_pool_name == pool_name(silo)
                assert deployment.entrypoint == "pipelines/silo_flow.py:silo_job"


@flow(name="poisoned-federation")
def poisoned_federation(scenario: Scenario) -> dict:
    return run_job(scenario, SiloRuns("poisoned"), job="poisoned").model_dump()


def test_a_poisoned_update_from_a_distributed_silo_is_left_out(stack, silo_files, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.mlflow_uri)
    scenario = load_scenario(
        SMOKE, ["federation.mode=distributed", "federation.min_silos=1", "federation.rounds=1"]
    )
    liar = {"FEDSILO_EXTENSIONS": "tests.poisoned_silo", "PYTHONPATH": str(REPO)}  # clinic-b's own lie
    workers = [
        stack.worker(silo, SMOKE, path, extra_env=liar if silo == "clinic-b" else None)
        for silo, path in silo_files.items()
    ]
    try:
        with temporary_settings({PREFECT_API_URL: stack.prefect_api}):
            result = poisoned_federation(scenario)
    finally:
        for worker in workers:
            stop(worker)
        EventsWorker.drain_all()  # its events client holds this server's URL; later tests need their own
    client = MlflowClient(stack.mlflow_uri)
    tags = client.get_run(result["parent_run_id"]).data.tags
    assert "clinic-b: tensor" in tags["fedsilo.refused.round_1"] and "NaN" in tags["fedsilo.refused.round_1"]
    version = client.get_model_version("smoke-global", result["registered_version"])
    weights = load_file(model_weights_path(version.source))
    assert all(bool(torch.isfinite(t).all()) for t in weights.values() if t.is_floating_point())


@flow(name="extended-federation")
def extended_federation(scenario: Scenario) -> Recorder:
    tracker = Recorder()
    run_job(
        scenario, SiloRuns("extended"), job="extended", tracker=tracker, wrap=Frozen, coordinator=AsksForSizes
    )
    return tracker


def test_a_new_step_and_a_new_wrapper_run_distributed(stack, silo_files, tmp_path):
    """tests/test_extension.py's step and wrapper: the silos' operators load its module."""
    exchange = f"federation.exchange={tmp_path / 'exchange'}"
    scenario = load_scenario(SMOKE, ["federation.mode=distributed", "federation.rounds=1", exchange])
    env = {"FEDSILO_EXTENSIONS": "tests.test_extension", "PYTHONPATH": str(REPO)}
    workers = [stack.worker(silo, SMOKE, path, extra_env=env) for silo, path in silo_files.items()]
    try:
        with temporary_settings({PREFECT_API_URL: stack.prefect_api}):
            tracker = extended_federation(scenario)
    finally:
        for worker in workers:
            stop(worker)
        EventsWorker.drain_all()
    check(tracker)


def test_secure_aggregation_runs_distributed_and_no_plain_update_reaches_the_store(
    stack, silo_files, tmp_path
):
    """The masked vectors cross through the job's MLflow artifacts; a silo's plain update never does."""
    seen: set[str] = set()
    watching = threading.Event()

    def watch() -> None:  # every weights file that appears in MLflow's artifact store, however briefly
        while not watching.is_set():
            seen.update(str(p) for p in (stack.root / "mlartifacts").rglob("*.safetensors"))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    workers = [stack.worker(silo, SMOKE, path) for silo, path in silo_files.items()]
    try:
        args = ["--mode=distributed", "--job-name=secure", "--set=privacy.secure_aggregation=true"]
        code, out, err = finish(fedsilo(stack, "run", str(SMOKE), *args, "--rounds=1", cwd=tmp_path))
    finally:
        watching.set()
        for worker in workers:
            stop(worker)
    assert code == 0, err[-4000:]
    masked = [p for p in seen if "/exchange/secure/round-001/masked-0/" in p]
    assert sorted(p.rsplit("/", 1)[1] for p in masked) == [f"{s}.safetensors" for s in sorted(silo_files)]
    assert not [p for p in seen if "/exchange/secure/round-001/clinic-" in p]  # no plain update
    for silo in silo_files:
        log = (stack.root / "silos" / silo / "worker.log").read_text()
        assert f"{silo} mask-round-1-attempt-0: served" in log


def test_container_work_pools_and_their_templates_are_accepted_by_the_server(stack, tmp_path):
    """`fedsilo pool` gives a silo a Docker or Kubernetes pool; the server validates the templates."""
    medical = str(REPO / "scenarios" / "medical.yaml")
    env = stack.env | {"MLFLOW_TRACKING_URI": "http://mlflow.example:5000"}
    common = ["--scenario", medical, "--image", "registry.example/fedsilo:1.0"]
    with temporary_settings({PREFECT_API_URL: stack.prefect_api}), get_client(sync_client=True) as client:
        for silo in ("hospital-a", "hospital-b"):  # the prefect.yaml test made them process pools
            with contextlib.suppress(ObjectNotFound):
                client.delete_work_pool(f"fedsilo-{silo}")
    for silo, kind, data in (
        ("hospital-a", "docker", "/srv/hospital-a"),
        ("hospital-b", "kubernetes", "notes-pvc"),
    ):
        made = subprocess.run(
            [str(BIN / "fedsilo"), "pool", "--silo", silo, "--type", kind, "--data", data, *common],
            env=env, cwd=tmp_path, capture_output=True, text=True,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr[-3000:]
        assert f"prefect worker start --pool fedsilo-{silo} --type {kind}" in made.stdout

    with temporary_settings({PREFECT_API_URL: stack.prefect_api}), get_client(sync_client=True) as client:
        docker = client.read_work_pool("fedsilo-hospital-a")
        variables = docker.base_job_template["variables"]["properties"]
        assert docker.type == "docker" and variables["volumes"]["default"] == ["/srv/hospital-a:/data:ro"]
        assert variables["image"]["default"] == "registry.example/fedsilo:1.0"
        assert variables["env"]["default"]["FEDSILO_SILO_DATA"] == "/data/notes.csv"
        kubernetes = client.read_work_pool("fedsilo-hospital-b")
        pod = kubernetes.base_job_template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
        assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "notes-pvc", "readOnly": True}
        for silo in ("hospital-a", "hospital-b"):
            assert client.read_deployment_by_name(f"silo-job/{silo}").work_pool_name == f"fedsilo-{silo}"

    wrong = subprocess.run(
        [str(BIN / "fedsilo"), "pool", "--silo", "hospital-a", "--type", "kubernetes", "--data=x", *common],
        env=env, cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert (
        wrong.returncode == 2
        and "exists with type 'docker'" in wrong.stderr
        and "Traceback" not in wrong.stderr
    )
