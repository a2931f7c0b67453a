"""A job killed mid-round resumes from its last completed round to the same weights and history;
a recorded job reruns from MLflow alone. Real `fedsilo run` processes on a temporary store."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from fedsilo.tracking import model_weights_path
from tests.conftest import REPO

pytestmark = pytest.mark.slow

# scaffold: the server's control variate (strategy state) and each silo's own (on its disk) must
# both carry over, or the resumed rounds would differ
ARGS = [str(REPO / "scenarios" / "smoke.yaml"), "--rounds", "4", "--set", "federation.strategy=scaffold"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    env = os.environ | {
        "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db",
        "FEDSILO_WORKDIR": f"{folder}/jobs",
    }
    return folder, env


def fedsilo(store, *args, check=True) -> subprocess.CompletedProcess:
    folder, env = store
    done = subprocess.run(
        [sys.executable, "-m", "fedsilo.cli", "run", *args],
        capture_output=True,
        text=True,
        cwd=folder,
        env=env,
    )
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def parent(store, job: str):
    client = MlflowClient(store[1]["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("smoke")
    runs = (
        client.search_runs(
            [experiment.experiment_id], f"tags.`fedsilo.job` = '{job}' and tags.`fedsilo.role` = 'federation'"
        )
        if experiment
        else []
    )
    return client, (runs[0] if runs else None)


def history(store, job: str, key: str = "global_accuracy") -> list[tuple[int, float]]:
    client, run = parent(store, job)
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


def final_weights(store, job: str) -> dict:
    client, run = parent(store, job)
    version = run.data.tags["fedsilo.registered_version"]
    source = client.get_model_version("smoke-global", version).source
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    # models:/ URIs resolve against the environment's store; never mlflow.set_tracking_uri, which
    # would outlive this test and shadow every later test's temporary store
    os.environ["MLFLOW_TRACKING_URI"] = store[1]["MLFLOW_TRACKING_URI"]
    try:
        return load_file(model_weights_path(source))
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture(scope="module")
def whole(store):
    fedsilo(store, *ARGS, "--job-name", "whole")
    return history(store, "whole")


def test_a_job_killed_in_round_2_resumes_to_the_same_weights_and_history(store, whole):
    folder, env = store
    command = [sys.executable, "-m", "fedsilo.cli", "run", *ARGS, "--job-name", "cut"]
    process = subprocess.Popen(
        command,
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        _, run = parent(store, "cut")
        if run and any(step == 1 for step, _ in history(store, "cut")):
            break
        assert process.poll() is None, "the job ended before it could be killed"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # round 2 is under way: the coordinator dies, no cleanup
    process.wait()
    assert [step for step, _ in history(store, "cut")] == [0, 1]

    resumed = fedsilo(store, *ARGS, "--resume", "cut")
    assert "resumes after round 1" in resumed.stdout + resumed.stderr
    assert history(store, "cut") == whole  # steps 0..4 once each, the same values
    assert [s for s, _ in history(store, "cut", "round_seconds")] == [1, 2, 3, 4]
    client, run = parent(store, "cut")
    assert run.info.status == "FINISHED" and run.data.tags["fedsilo.resumed"].startswith("round 1")
    ours, reference = final_weights(store, "cut"), final_weights(store, "whole")
    assert ours.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(ours[name], tensor), name


def test_resume_refuses_a_changed_scenario_and_an_unknown_job(store, whole):
    changed = fedsilo(store, *ARGS, "--set", "federation.learning_rate=0.5", "--resume", "whole", check=False)
    assert (
        changed.returncode == 2 and "federation.learning_rate: job 'whole' ran with '0.001'" in changed.stderr
    )
    finished = fedsilo(store, *ARGS, "--resume", "whole", check=False)
    assert (
        finished.returncode == 1 and "already finished" in finished.stderr and "--from-run" in finished.stderr
    )
    unknown = fedsilo(store, *ARGS, "--resume", "no-such-job", check=False)
    assert unknown.returncode == 1 and "no job named 'no-such-job'" in unknown.stderr
    assert "Traceback" not in changed.stderr + unknown.stderr


def test_a_recorded_job_reruns_from_mlflow_alone(store, whole):
    client, run = parent(store, "whole")
    assert client.get_run(run.info.run_id).data.tags["fedsilo.version"] == "0.1.0"
    assert "mlflow.source.git.commit" in run.data.tags
    fedsilo(store, "--from-run", run.info.run_id, "--job-name", "again")
    assert history(store, "again") == whole
