"""Podman for the container tests: the configuration that runs here (docker/podman.sh), the
locally built images, made once per test session, and docker/compose.yaml brought up with fresh
secrets (`ComposeStack`, also used by bench/stack_start.py)."""

import os
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from base64 import b64encode

import pytest

from tests.conftest import REPO
from tests.stack import BIN, free_port

PODMAN = [str(REPO / "docker" / "podman.sh")]
IMAGE = "localhost/fedsilo:test"
POSTGRES_IMAGE = "localhost/fedsilo-postgres:test"
COMPOSE = REPO / "docker" / "compose.yaml"
PROJECT = "fedsilo-stack-test"
SILOS = ("clinic-a", "clinic-b")  # the smoke profile's silos
# the smoke profile's services: the servers, the set-up one-shots, the coordinator and the silos
SERVICES = ("postgres", "prefect", "mlflow", "mlflow-users", "coordinator-key", "enrol-smoke", "serve")
SERVICES += SILOS
ROSTER = "/var/lib/fedsilo/roster/roster.yaml"  # inside the containers that mount the roster volume


def podman(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    env = os.environ | {"FEDSILO_IMAGE": IMAGE, "FEDSILO_POSTGRES_IMAGE": POSTGRES_IMAGE}
    run = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check and run.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({run.returncode}):\\n{run.stderr[-4000:]}")
    return run


def require_podman() -> None:
    """Skip, saying why, where podman cannot build or run containers."""
    missing = [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed; `make system-deps` (as root) installs them")
    probe = podman("run", "--rm", "--help", check=False, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"podman cannot run here: {probe.stderr.strip()[-500:]}")


def build_fedsilo_image() -> str:
    require_podman()
    podman("base", timeout=900)
    podman("build", timeout=1800)
    return IMAGE


def build_postgres_image() -> str:
    podman("postgres", timeout=900)
    return POSTGRES_IMAGE


class ComposeStack:
    """The compose project with fresh secrets, host ports and each silo's data folder."""

    def __init__(self, folder, image: str, silo_files: dict):
        self.prefect_port, self.mlflow_port = free_port(), free_port()
        self.secrets = {
            "POSTGRES_PASSWORD": secrets.token_urlsafe(16),
            "PREFECT_AUTH": f"admin:{secrets.token_urlsafe(16)}",
            "MLFLOW_USER": "admin",
            "MLFLOW_PASSWORD": secrets.token_urlsafe(16),
            "MLFLOW_SECRET_KEY": secrets.token_urlsafe(32),
            **{
                f"MLFLOW_PASSWORD_{silo.upper().replace('-', '_')}": secrets.token_urlsafe(16)
                for silo in SILOS
            },
            "MLFLOW_PASSWORD_HOSPITAL_A": secrets.token_urlsafe(16),
        }
        settings = {
            **self.secrets,
            "FEDSILO_IMAGE": image,
            "FEDSILO_POSTGRES_IMAGE": POSTGRES_IMAGE,
            "PREFECT_PORT": str(self.prefect_port),
            "MLFLOW_PORT": str(self.mlflow_port),
        }
        for silo, path in silo_files.items():
            path.parent.chmod(0o755)  # readable by the image's unprivileged user
            path.chmod(0o644)
            prefix = silo.upper().replace("-", "_")
            settings |= {f"{prefix}_VOLUME": str(path.parent), f"{prefix}_DATA": f"/data/{path.name}"}
        self.env_file = folder / "stack.env"
        self.env_file.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
        self.prefect_api = f"http://127.0.0.1:{self.prefect_port}/api"
        self.mlflow_uri = f"http://127.0.0.1:{self.mlflow_port}"

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        command = [str(BIN / "podman-compose"), "-p", PROJECT, "-f", str(COMPOSE)]
        command += ["--env-file", str(self.env_file), "--profile", "smoke", *args]
        env = os.environ | {"CONTAINERS_CONF": str(REPO / "docker" / "containers.conf")}
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
        assert done.returncode == 0, (
            f"podman-compose {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
        return done

    def container(self, service: str) -> str:
        return f"{PROJECT}_{service}_1"

    def mounts(self, service: str) -> dict[str, bool]:
        """The project's named volumes mounted in the service's container, each with whether it is
        writable there (volume names without the project's prefix)."""
        found = podman(
            "inspect", self.container(service), "--format",
            "{{range .Mounts}}{{if .Name}}{{.Name}}={{.RW}} {{end}}{{end}}",
        ).stdout.split()  # fmt: skip
        prefix = f"{PROJECT}_"
        pairs = (mount.rsplit("=", 1) for mount in found)
        return {name.removeprefix(prefix): rw == "true" for name, rw in pairs if name.startswith(prefix)}

    def roster(self) -> str:
        """The stack's roster, as the coordinator reads it ("" while there is none)."""
        return podman("exec", self.container("serve"), "cat", ROSTER, check=False).stdout

    def prefect_healthy(self) -> bool:
        return status(f"{self.prefect_api}/health", self.secrets["PREFECT_AUTH"]) == 200

    def restarts(self, service: str) -> int:
        """How often podman restarted the service's container (its restart policy at work)."""
        found = podman("inspect", self.container(service), "--format", "{{.RestartCount}}", check=False)
        return int(found.stdout.strip() or 0)

    def diagnosis(self, services=("postgres", "prefect", "mlflow")) -> str:
        """The project's containers and their states, and the last lines of the servers' logs."""
        states = podman(
            "ps", "--all", "--filter", f"label=io.podman.compose.project={PROJECT}",
            "--format", "{{.Names}}: {{.Status}}", check=False,
        )  # fmt: skip
        lines = [(states.stdout + states.stderr).strip() or "no container of the project exists"]
        for service in services:
            log = podman("logs", "--tail", "8", self.container(service), check=False)
            tail = (log.stdout + log.stderr).strip()[-600:]
            lines.append(f"{service} (restarted {self.restarts(service)}x) log: {tail}")
        return "\n".join(lines)

    def client_env(self) -> dict[str, str]:
        """What a user's machine needs to talk to the stack: its API URLs and credentials."""
        return {
            "PREFECT_API_URL": self.prefect_api,
            "PREFECT_API_AUTH_STRING": self.secrets["PREFECT_AUTH"],
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "MLFLOW_TRACKING_USERNAME": "admin",
            "MLFLOW_TRACKING_PASSWORD": self.secrets["MLFLOW_PASSWORD"],
        }


def status(url: str, credentials: str | None = None, method: str = "GET", body: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if credentials is not None:
        request.add_header("Authorization", f"Basic {b64encode(credentials.encode()).decode()}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # 2 cores, a stack starting
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_for(check, what: str, seconds: float = 300, diagnosis=lambda: "") -> None:
    """Poll `check` until it holds; past `seconds`, fail saying what is missing and why, if known."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(2)
    raise TimeoutError(f"the stack never got {what} within {seconds:.0f}s\n{diagnosis()}".rstrip())
