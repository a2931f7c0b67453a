"""Podman for the container tests: the configuration that runs here (docker/podman.sh) and the
locally built images, made once per test session."""

import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO

PODMAN = [str(REPO / "docker" / "podman.sh")]
IMAGE = "localhost/fedsilo:test"
POSTGRES_IMAGE = "localhost/fedsilo-postgres:test"


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
