"""Shared fixtures: a temporary MLflow store per test, one Prefect server per session."""

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@pytest.fixture(autouse=True)
def own_state_folders(tmp_path, monkeypatch):
    """Every test's silos keep their state (keys, replay stores, ledgers, alone models, personal
    layers) under its own tmp_path, never in the working tree; the coordinator too, unless the
    session's stack set its key."""
    monkeypatch.setenv("FEDSILO_SILO_STATE", str(tmp_path / "silo-state"))
    if "FEDSILO_COORDINATOR_STATE" not in os.environ:
        monkeypatch.setenv("FEDSILO_COORDINATOR_STATE", str(tmp_path / "coordinator"))


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    """A fresh SQLite MLflow store with its artifacts under tmp_path; returned as its URI."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # default artifact root is relative to the working directory
    monkeypatch.setenv("FEDSILO_WORKDIR", str(tmp_path / "jobs"))
    return uri


@pytest.fixture(scope="session")
def prefect_server():
    """One ephemeral Prefect server for the whole session (entering it costs ~9 s)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(), temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def shared_file(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (../shared/data lies beside the repository)")
    return path


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """A real `prefect server` and `mlflow server` on 127.0.0.1 for distributed tests."""
    from tests.stack import Stack

    servers = Stack(tmp_path_factory.mktemp("stack"))
    keys = {name: servers.env[name] for name in ("FEDSILO_COORDINATOR_STATE", "FEDSILO_ROSTER")}
    os.environ.update(keys)  # flows run in this process sign with the stack's coordinator key
    yield servers
    for name in keys:
        os.environ.pop(name, None)
    servers.close()


@pytest.fixture(scope="session")
def silo_files(tmp_path_factory) -> dict[str, Path]:
    """The smoke scenario's rows as one CSV per silo, each in a folder of its own."""
    from fedsilo.scenario import load_scenario
    from tests.stack import export_silo_files

    smoke = load_scenario(REPO / "scenarios" / "smoke.yaml")
    return export_silo_files(smoke, tmp_path_factory.mktemp("hospital-data"))


@pytest.fixture(scope="session")
def fedsilo_image() -> str:
    """The fedsilo image, built once per session with podman on a debootstrap base (or skipped)."""
    from tests.containers import build_fedsilo_image

    return build_fedsilo_image()


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags that keep Chromium from reaching out to the internet, which this machine refuses.
QUIET = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
         "--disable-background-networking", "--disable-component-update"]  # fmt: skip


@pytest.fixture
def page(tmp_path):
    """A page of Debian's chromium, headless, driven by Playwright (which downloads no browser)."""
    if not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=QUIET)
        yield browser.new_page(viewport={"width": 1400, "height": 1000})
        browser.close()
