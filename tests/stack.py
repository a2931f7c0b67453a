"""Real servers for distributed tests: `prefect server`, `mlflow server` and silo workers, on 127.0.0.1."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd

from fedsilo.data.silo_data import silo_examples

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_http(url: str, process: subprocess.Popen, log: Path, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {seconds}s:\n{log.read_text()[-3000:]}")


def start(command: list[str], log: Path, env: dict, cwd: Path | None = None) -> subprocess.Popen:
    """A background process in its own session (so a test can kill it with everything it started)."""
    handle = log.open("w")
    return subprocess.Popen(
        command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
    )


def stop(process: subprocess.Popen, sig: int = signal.SIGINT, wait: float = 20) -> None:
    """Stop a process group (SIGINT stops a Prefect worker; SIGTERM does not), then make sure."""
    if process.poll() is None:
        os.killpg(process.pid, sig)
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class Stack:
    """A Prefect server and an MLflow tracking server (serving artifacts) in `root`."""

    def __init__(self, root: Path):
        self.root = root
        self.processes: list[subprocess.Popen] = []
        prefect_port, mlflow_port = free_port(), free_port()
        self.prefect_api = f"http://127.0.0.1:{prefect_port}/api"
        self.mlflow_uri = f"http://127.0.0.1:{mlflow_port}"
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(root / "prefect-home"),
            "PREFECT_API_URL": self.prefect_api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{root}/prefect.db",
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "TRANSFORMERS_VERBOSITY": "error",
            # the coordinator's key and the roster its operator keeps (fedsilo keys init --coordinator)
            "FEDSILO_COORDINATOR_STATE": str(root / "coordinator"),
            "FEDSILO_ROSTER": str(root / "roster.yaml"),
        }
        self.env.pop("FEDSILO_WORKDIR", None)
        cli(["keys", "init", "--coordinator", "--roster", self.env["FEDSILO_ROSTER"]], self.env)
        prefect = [
            str(BIN / "prefect"),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(prefect_port),
        ]
        mlflow = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port)]
        mlflow += ["--backend-store-uri", f"sqlite:///{root}/mlflow.db"]
        mlflow += ["--artifacts-destination", str(root / "mlartifacts"), "--workers", "1"]
        self.processes.append(start(prefect, root / "prefect-server.log", self.env))
        self.processes.append(start(mlflow, root / "mlflow-server.log", self.env, cwd=root))
        wait_http(f"{self.prefect_api}/health", self.processes[0], root / "prefect-server.log")
        wait_http(f"{self.mlflow_uri}/health", self.processes[1], root / "mlflow-server.log")

    def enrol(self, silo: str) -> str:
        """Make the silo's key in its own state folder and enrol it in the roster; its public key."""
        state = self.silo_state(silo)
        made = cli(["keys", "init", "--silo", silo, "--state", str(state)], self.env)
        public_key = made.splitlines()[1].split()[1]
        cli(["roster", "add", silo, public_key, "--replace"], self.env)
        return public_key

    def silo_state(self, silo: str) -> Path:
        return self.root / "silos" / silo / "state"

    def worker(
        self, silo: str, scenario: Path, data: Path | None = None, extra_env: dict | None = None,
        args: tuple[str, ...] = (),
    ) -> subprocess.Popen:  # fmt: skip
        """`fedsilo worker` for one silo, in a folder of its own (its data is all it can see),
        enrolled in the roster and holding a copy of it."""
        home = self.root / "silos" / silo
        home.mkdir(parents=True, exist_ok=True)
        self.enrol(silo)
        command = [str(BIN / "fedsilo"), "worker", "--silo", silo, "--scenario", str(scenario)]
        command += ["--data", str(data)] if data else []
        command += ["--state", str(self.silo_state(silo)), *args]
        env = self.env | {"PREFECT_WORKER_QUERY_SECONDS": "1"} | (extra_env or {})
        process = start(command, home / "worker.log", env, cwd=home)
        self.processes.append(process)
        return process

    def wait_ready(self, silo: str, seconds: float = 180) -> None:
        """Wait until the silo's Prefect worker polls its pool (its log says it started): a job
        started before that finds the silo's old deployment and may give up on the silo first."""
        log, deadline = self.root / "silos" / silo / "worker.log", time.monotonic() + seconds
        while time.monotonic() < deadline:
            if log.exists() and "started!" in log.read_text(errors="replace"):
                return
            time.sleep(0.5)
        raise TimeoutError(f"the worker of {silo} did not start within {seconds:.0f}s: see {log}")

    def close(self) -> None:
        for process in reversed(self.processes):
            stop(process)


def cli(args: list[str], env: dict) -> str:
    """Run a quick `fedsilo` command; its output, or an assertion naming its error."""
    done = subprocess.run([str(BIN / "fedsilo"), *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"fedsilo {' '.join(args)}: {done.stderr[-2000:]}"
    return done.stdout


def export_silo_files(scenario, folder: Path) -> dict[str, Path]:
    """Each silo's rows as its own CSV, as a hospital would hold them (same rows, same order)."""
    files = {}
    for silo in scenario.silo_names():
        rows = silo_examples(scenario, silo)
        path = folder / silo / "notes.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"text": list(rows.inputs), "label": rows.labels}).to_csv(path, index=False)
        files[silo] = path
    return files


def kill_tree(pid: int) -> None:
    """SIGKILL a process and everything it started, as when a silo's host goes down."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    doomed, queue = [], [pid]
    while queue:
        current = queue.pop()
        doomed.append(current)
        queue.extend(children.get(current, []))
    for victim in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
