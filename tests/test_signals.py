"""Process hygiene: SIGTERM (what Docker and Kubernetes send) ends `fedsilo run` and `fedsilo worker`
within 10 s, leaves no process behind and leaves the job resumable; the embedded Prefect server is
started once and stopped on every way out."""

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import REPO
from tests.stack import BIN, Stack, stop

pytestmark = pytest.mark.slow
SMOKE = str(REPO / "scenarios" / "smoke.yaml")
EXIT_WITHIN = 10  # seconds from SIGTERM to exit
FAST_FAULTS = [
    "--set=federation.silo_timeout_seconds=20",
    "--set=federation.silo_retries=0",
    "--set=federation.silo_pickup_seconds=15",
]


def _stats() -> list[tuple[int, int, int]]:
    """(pid, parent pid, process group) of every live process, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            found.append((int(stat.parent.name), int(fields[1]), int(fields[2])))
    return found


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for child, parent, _ in _stats():
        children.setdefault(parent, []).append(child)
    found, queue = set(), [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.add(child)
            queue.append(child)
    return found


def left_behind(process: subprocess.Popen, children: set[int]) -> set[int]:
    """Processes of `process`'s group, or among its former `children`, still alive (a moment given
    to the kernel to reap them)."""
    deadline = time.monotonic() + 2
    while True:
        alive = {pid for pid, _, group in _stats() if group == process.pid or pid in children}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def start(args: list[str], env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    """`fedsilo ARGS` from this checkout in a session of its own, its output in `log`."""
    env = env | {"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    with log.open("w") as handle:
        return subprocess.Popen(
            [str(BIN / "fedsilo"), *args],
            env=env,
            cwd=cwd,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for(text: str, log: Path, process: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while text not in log.read_text():
        assert process.poll() is None, f"exited ({process.returncode}) before {text!r}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no {text!r} within {seconds}s:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


def terminate(process: subprocess.Popen) -> float:
    """Send SIGTERM to the process alone (as `docker stop` does); seconds until it exited."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(EXIT_WITHIN + 20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return time.monotonic() - started


def job_status(tracking_uri: str, job: str) -> str:
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("smoke").experiment_id],
        f"tags.`fedsilo.role` = 'federation' AND attributes.run_name = '{job}'",
    )
    return run.info.status


@pytest.fixture
def embedded(tmp_path) -> dict:
    """An environment of its own: MLflow store, exchange folder, Prefect home and temp folder."""
    (tmp_path / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    return env | {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "FEDSILO_WORKDIR": str(tmp_path / "jobs"),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "TMPDIR": str(tmp_path / "tmp"),
    }


def test_sigterm_ends_an_embedded_run_which_then_resumes(embedded, tmp_path):
    log = tmp_path / "run.log"
    run = start(["run", SMOKE, "--rounds=2", "--job-name=stopped"], embedded, tmp_path, log)
    wait_for("fit-clinic-a-round-1", log, run)  # mid-round, the local Prefect server up
    children = descendants(run.pid)
    servers = [pid for pid in children if b"uvicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(servers) == 1, "one Prefect server, never a second"

    seconds = terminate(run)
    output = log.read_text()
    assert seconds < EXIT_WITHIN and run.returncode == 130, output[-3000:]
    assert not left_behind(run, children)
    assert "Traceback" not in output and "--resume=stopped" in output
    assert job_status(embedded["MLFLOW_TRACKING_URI"], "stopped") == "FAILED"
    with sqlite3.connect(tmp_path / "prefect" / "prefect.db") as db:
        states = {state for (state,) in db.execute("SELECT state_type FROM flow_run")}
    assert states and states <= {"CRASHED", "FAILED", "CANCELLED"}, states
    assert not list((tmp_path / "tmp").glob("fedsilo-prefect-server-*"))  # its log, kept only on failure

    resumed = subprocess.run(
        [str(BIN / "fedsilo"), "run", SMOKE, "--rounds=2", "--resume=stopped"],
        env=embedded | {"PYTHONPATH": str(REPO)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stdout + resumed.stderr  # a normal run prints none
    assert job_status(embedded["MLFLOW_TRACKING_URI"], "stopped") == "FINISHED"


def test_a_server_that_does_not_start_fails_in_one_line(embedded, tmp_path):
    env = embedded | {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "0"}
    log = tmp_path / "run.log"
    run = start(["run", SMOKE, "--rounds=1"], env, tmp_path, log)
    children = descendants(run.pid)  # the server starts at once, beside the silos' loading
    run.wait(120)
    output = log.read_text()
    assert run.returncode == 1 and "Traceback" not in output, output
    (line,) = [line for line in output.splitlines() if line.startswith("fedsilo run:")]
    assert "did not answer within 0 s" in line and "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT" in line
    assert not left_behind(run, children)


def test_sigterm_ends_a_worker_mid_job(stack: Stack, tmp_path):
    env = stack.env | {"PREFECT_WORKER_QUERY_SECONDS": "1"}
    workers, logs = {}, {}
    for silo in ("clinic-a", "clinic-b"):
        (tmp_path / silo).mkdir()
        logs[silo] = tmp_path / silo / "worker.log"
        stack.enrol(silo)  # its key, enrolled in the stack's roster (FEDSILO_ROSTER in env)
        command = ["worker", "--silo", silo, "--scenario", SMOKE, "--state", str(stack.silo_state(silo))]
        workers[silo] = start(command, env, tmp_path / silo, logs[silo])
    coordinator_log = tmp_path / "coordinator.log"
    coordinator = start(
        ["run", SMOKE, "--mode=distributed", "--job-name=worker-stopped", "--set=federation.local_steps=300"]
        + FAST_FAULTS,
        stack.env,
        tmp_path,
        coordinator_log,
    )
    try:
        wait_for("fit-clinic-a-round-1", logs["clinic-a"], workers["clinic-a"])  # its job run fits
        for silo, worker in workers.items():
            children = descendants(worker.pid)  # the silo's job run, in a process group of its own
            seconds = terminate(worker)
            assert seconds < EXIT_WITHIN, logs[silo].read_text()[-3000:]
            assert not left_behind(worker, children), silo
            assert "Traceback" not in logs[silo].read_text()
        seconds = terminate(coordinator)
        assert seconds < EXIT_WITHIN and coordinator.returncode == 130, coordinator_log.read_text()[-3000:]
        assert job_status(stack.mlflow_uri, "worker-stopped") == "FAILED"
    finally:
        for process in (*workers.values(), coordinator):
            stop(process, signal.SIGKILL)
