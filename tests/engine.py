"""An engine job with in-process silos and a tracker that keeps every round's weights: the
harness the engine's tests share (no Prefect, no MLflow)."""

import logging

from safetensors.torch import load_file

from fedsilo.engine import Coordinator, NullTracker
from fedsilo.engine.aggregation import Aggregation, RoundContext
from fedsilo.engine.ledger import WeightLedger
from fedsilo.paths import JobPaths
from fedsilo.scenario import load_scenario
from fedsilo.silo import release_participants
from fedsilo.transport import InProcess
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

    def register(self, model_id, make_champion, reason):
        self.registered = model_id
        return "1"


def run(tmp_path, *overrides, transport=None, reporters=(), exchange=None, wrap=None):
    """The smoke scenario with `overrides`, through the engine; weights cross through a folder
    under `tmp_path` unless `exchange` names another store (memory://...)."""
    scenario = load_scenario(REPO / "scenarios" / "smoke.yaml", list(overrides))
    paths = JobPaths.under(exchange or tmp_path / "jobs", "job")
    tracker = Recorder()
    try:
        coordinator = Coordinator(
            scenario, "job", transport or InProcess(), tracker, paths, reporters, wrap=wrap
        )
        return coordinator.run(), tracker
    finally:
        release_participants()


def aggregate(strategy, current, replies, folder, rules, round_index=1):
    """One round's aggregation outside a job (the strategy behind the update checks): the new
    global model's reference (None when no update passed) and the refused silos with why."""
    log = logging.getLogger("fedsilo")
    context = RoundContext(
        round_index,
        JobPaths.under(folder, "job"),
        None,
        lambda name, work: work(),
        WeightLedger(log),
        None,
        log,
    )
    new, refused, _ = Aggregation(strategy, rules).aggregate(context, current, replies)
    return new, refused
