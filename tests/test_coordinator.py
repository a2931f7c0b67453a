"""The engine's round loop, driven with in-process silos and no Prefect or MLflow."""

import math
from dataclasses import replace

import pytest
import torch

from fedsilo.coordinator import Coordinator
from fedsilo.federation import FederationError, JobPaths
from fedsilo.local import LocalSilos
from fedsilo.scenario import load_scenario
from fedsilo.silo import release_participants
from fedsilo.strategies import STRATEGIES, FedAvg, register_strategy
from fedsilo.weights import read_state, write_state
from tests.conftest import REPO
from tests.engine import Recorder, run

# global_loss by round of scenarios/smoke.yaml, recorded with the code before the engine held the
# loop (commit 4e993df, CPU, torch 2.13.0): the refactor must not change a number.
SMOKE_LOSS_BEFORE = [1.607823, 1.605265, 1.605421]


class Events:
    def __init__(self):
        self.names, self.rounds, self.ending = [], [], None

    def round_done(self, record, history):
        self.rounds.append(record.round_index)

    def event(self, name, detail):
        self.names.append((name, detail.get("silo")))

    def finished(self, summary, history, failed):
        self.ending = (summary, failed)


def test_fedavg_gives_the_numbers_it_gave_before_the_loop_moved_into_the_engine(tmp_path):
    result, tracker = run(tmp_path)
    losses = [tracker.rounds[r]["global_loss"] for r in range(3)]
    assert losses == pytest.approx(SMOKE_LOSS_BEFORE, abs=2e-6)
    assert result.curve == [tracker.rounds[r]["global_accuracy"] for r in range(3)]
    assert not list((tmp_path / "jobs").rglob("*.safetensors"))  # every weight file was deleted
    matrix = tracker.matrix
    assert list(matrix.index) == ["clinic-a (local)", "clinic-b (local)", "global"]


def test_fedprox_with_mu_zero_is_fedavg_exactly(tmp_path):
    _, fedavg = run(tmp_path / "a")
    _, fedprox = run(tmp_path / "b", "federation.strategy=fedprox", "federation.proximal_mu=0")
    for name, tensor in fedavg.models[2].items():
        assert torch.equal(tensor, fedprox.models[2][name]), name


def test_strategy_state_is_logged_with_each_round(tmp_path):
    _, tracker = run(tmp_path, "federation.strategy=fedadam")
    assert tracker.extra[0] == [] and tracker.extra[1] == tracker.extra[2] == ["strategy_state.safetensors"]


def test_local_steps_and_personalization(tmp_path):
    result, tracker = run(
        tmp_path, "federation.local_steps=3", "federation.rounds=1", "evaluation.personalize_steps=2"
    )
    assert tracker.silos["clinic-a"]["num_examples"][1] == 30
    assert tracker.silos["clinic-a"]["fit_steps"][1] == 3  # local_steps, not an epoch (4 batches of 8)
    assert set(result.personalized) == {"clinic-a", "clinic-b"}
    assert tracker.silos["clinic-b"]["personalized_accuracy"][1] == result.personalized["clinic-b"]
    row = tracker.matrix.loc["personalized"]
    assert row["clinic-a"] == result.personalized["clinic-a"]
    assert "personalized_accuracy" in tracker.rounds[1]


@register_strategy
class FirstSiloWins(FedAvg):
    """A strategy defined the documented way: the global model becomes the first silo's update."""

    name = "first_silo_wins"
    fields = ()

    def __init__(self):
        super().__init__(1.0)

    def aggregate(self, current, updates):
        first = next(iter(updates))
        return dict(first.state)


def test_a_strategy_registered_outside_fedsilo_runs_a_federation(tmp_path):
    assert STRATEGIES["first_silo_wins"] is FirstSiloWins
    result, tracker = run(tmp_path, "federation.strategy=first_silo_wins", "federation.rounds=1")
    clinic_a = tracker.silos["clinic-a"]
    assert clinic_a["global_f1_macro"][1] == clinic_a["local_f1_macro"][1]  # the same weights
    assert result.rounds == 1 and 1 in tracker.models


class Flaky(LocalSilos):
    """clinic-b does not answer its fits."""

    def fit(self, scenario, round_index, weights, config):
        replies, missing = super().fit(scenario, round_index, weights, config)
        return [r for r in replies if r.silo != "clinic-b"], [*missing, "clinic-b"]


def test_a_silo_that_does_not_answer_is_left_out_and_reported(tmp_path):
    events = Events()
    paths = JobPaths.under(tmp_path / "jobs", "job")
    result, tracker = run(tmp_path, "federation.min_silos=1", silos=Flaky(paths), reporters=[events])
    left_out = ("fedsilo.silo.left-out", "clinic-b")
    assert events.names == [left_out, left_out, ("fedsilo.champion.moved", None)]
    assert events.rounds == [0, 1, 2] and events.ending[1] is False
    assert tracker.silos["clinic-b"]["answered"] == {1: 0.0, 2: 0.0}
    assert result.rounds == 2


def test_below_quorum_the_job_fails_and_leaves_no_weights(tmp_path):
    events = Events()
    paths = JobPaths.under(tmp_path / "jobs", "job")
    with pytest.raises(FederationError, match="round 1: only 1 of 2 silos answered"):
        run(tmp_path, silos=Flaky(paths), reporters=[events])
    assert events.ending[1] is True and "FAILED" in events.ending[0]
    assert not list((tmp_path / "jobs").rglob("*.safetensors"))


class Poisoned(LocalSilos):
    """clinic-b's updates hold NaN (a broken or dishonest silo), written with a valid checksum."""

    def fit(self, scenario, round_index, weights, config):
        replies, missing = super().fit(scenario, round_index, weights, config)
        for index, report in enumerate(replies):
            if report.silo == "clinic-b":
                state = read_state(report.update)
                state = {k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in state.items()}
                replies[index] = replace(report, update=write_state(state, report.update.uri))
        return replies, missing


class Tags(Recorder):
    def __init__(self):
        super().__init__()
        self.tags: dict[str | None, dict[str, str]] = {}

    def set_tags(self, tags, silo=None):
        self.tags.setdefault(silo, {}).update(tags)


def test_a_poisoned_update_is_rejected_and_no_weights_are_left_behind(tmp_path):
    scenario = load_scenario(
        REPO / "scenarios" / "smoke.yaml", ["federation.min_silos=1", "tracking.log_models=false"]
    )
    paths = JobPaths.under(tmp_path / "jobs", "job")
    tracker = Tags()
    try:
        result = Coordinator(scenario, "job", Poisoned(paths), tracker, paths).run()
    finally:
        release_participants()
    assert result.rounds == 2 and tracker.silos["clinic-b"]["answered"] == {1: 0.0, 2: 0.0}
    assert "NaN" in tracker.tags["clinic-b"]["fedsilo.rejected.round_1"]
    assert tracker.tags[None]["fedsilo.missing.round_2"] == "clinic-b"
    assert all(math.isfinite(v) for v in tracker.rounds[2].values())
    assert not list((tmp_path / "jobs").rglob("*.safetensors"))  # rejected updates and the final model too


class Impostor(LocalSilos):
    """clinic-b answers every fit twice and once in clinic-a's name; its evaluations are garbage."""

    def fit(self, scenario, round_index, weights, config):
        replies, missing = super().fit(scenario, round_index, weights, config)
        b = next(r for r in replies if r.silo == "clinic-b")
        return [replace(b, silo="clinic-a"), *replies, b, replace(b, silo="mallory")], missing

    def evaluate(self, scenario, weights, step):
        replies, missing = super().evaluate(scenario, weights, step)
        return [replace(e, confusion=[[-9]]) if e.silo == "clinic-b" else e for e in replies], missing


def test_replies_speak_once_and_only_for_known_silos(tmp_path):
    paths = JobPaths.under(tmp_path / "jobs", "job")
    result, tracker = run(tmp_path, "federation.min_silos=1", "federation.rounds=1", silos=Impostor(paths))
    # the first clinic-a reply (clinic-b's weights under another name) is kept as clinic-a's,
    # clinic-a's own second reply and the unknown name are dropped; clinic-b's counts stand
    assert result.rounds == 1 and tracker.rounds[1]["silos_answered"] == 2
    assert tracker.rounds[1]["silos_evaluated"] == 1  # clinic-b's negative confusion matrix is left out
    assert "clinic-b" not in tracker.silos or 1 not in tracker.silos["clinic-b"].get("global_accuracy", {})


class Counting(LocalSilos):
    """Counts how many steps the coordinator asks of each silo, by kind."""

    def __init__(self, paths):
        super().__init__(paths)
        self.steps = {"evaluate": 0, "evaluate_models": 0}

    def evaluate(self, scenario, weights, step):
        self.steps["evaluate"] += 1
        return super().evaluate(scenario, weights, step)

    def evaluate_models(self, scenario, models, step):
        self.steps["evaluate_models"] += 1
        replies, missing = super().evaluate_models(scenario, models, step)
        replies = [
            r if r.silo != "clinic-b" else replace(r, models={"(forged)": r.models["clinic-a (local)"]})
            for r in replies
        ]
        return replies, missing


def test_the_silo_matrix_is_one_step_per_silo_and_takes_only_known_models(tmp_path):
    three = "silos=[{name: clinic-a}, {name: clinic-b}, {name: clinic-c}]"
    silos = Counting(JobPaths.under(tmp_path / "jobs", "job"))
    _, tracker = run(tmp_path, three, "federation.rounds=1", silos=silos)
    assert silos.steps == {"evaluate": 2, "evaluate_models": 1}  # rounds 0 and 1, then one matrix step
    matrix = tracker.matrix
    assert list(matrix.index) == ["clinic-a (local)", "clinic-b (local)", "clinic-c (local)", "global"]
    assert matrix.loc["clinic-a (local)"].notna().tolist() == [
        True,
        False,
        True,
    ]  # clinic-b forged its scores
    assert matrix.loc["global"].notna().all()


def test_weights_in_memory_give_the_same_job_as_files_and_leave_nothing_behind(tmp_path):
    from fedsilo import weights

    _, on_disk = run(tmp_path / "files")
    _, in_memory = run(tmp_path / "memory", exchange="memory://tests")
    for round_index, model in on_disk.models.items():
        for name, tensor in model.items():
            assert torch.equal(in_memory.models[round_index][name], tensor), (round_index, name)
    assert in_memory.matrix.equals(on_disk.matrix)
    assert not [uri for uri in weights._in_memory if uri.startswith("memory://tests/")]
