"""An engine job with in-process silos and a tracker that keeps every round's weights: the
harness the engine's tests share (no Prefect, no MLflow)."""

from safetensors.torch import load_file

from fedsilo.coordinator import Coordinator
from fedsilo.federation import JobPaths
from fedsilo.local import LocalSilos, NullTracker
from fedsilo.scenario import load_scenario
from fedsilo.silo import release_participants
from fedsilo.weights import State
from tests.conftest import REPO


class Recorder(NullTracker):
    """Keeps every round's global weights and the reporters' view, instead of MLflow."""

    def __init__(self):
        super().__init__()
        self.models: dict[int, State] = {}
        self.extra: dict[int, list[str]] = {}
        self.extra_tensors: dict[int, dict[str, State]] = {}
        self.meta: dict = {}

    def log_global_model(self, round_index, weights_path, meta, extra_files):
        self.models[round_index] = load_file(weights_path)
        self.extra[round_index] = sorted(extra_files)
        self.extra_tensors[round_index] = {name: load_file(path) for name, path in extra_files.items()}
        self.meta = meta
        return f"m-{round_index}"


def run(tmp_path, *overrides, silos=None, reporters=(), exchange=None):
    """The smoke scenario with `overrides`, through the engine; weights cross through a folder
    under `tmp_path` unless `exchange` names another store (memory://...)."""
    scenario = load_scenario(REPO / "scenarios" / "smoke.yaml", list(overrides))
    paths = JobPaths.under(exchange or tmp_path / "jobs", "job")
    tracker = Recorder()
    try:
        coordinator = Coordinator(scenario, "job", silos or LocalSilos(paths), tracker, paths, reporters)
        return coordinator.run(), tracker
    finally:
        release_participants()
