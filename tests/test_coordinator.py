"""The engine's round loop, driven with in-process silos and no Prefect or MLflow."""

import math
from collections import Counter
from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import pytest
import torch

from fedsilo.errors import FederationError, UnknownKind
from fedsilo.scenario import load_scenario
from fedsilo.silo_steps import handle
from fedsilo.steps import Evaluate, Fit, Score, Step, load_step
from fedsilo.strategies import STRATEGIES, FedAvg, StrategySettings, register_strategy
from fedsilo.transport import InProcess
from fedsilo.weights import read_state, write_state
from tests.conftest import REPO
from tests.engine import run

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
    assert list(matrix.index) == ["clinic-a (local)", "clinic-b (local)", "global", "alone"]


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


class FirstSiloWinsSettings(StrategySettings):
    name: Literal["first_silo_wins"] = "first_silo_wins"


@register_strategy
class FirstSiloWins(FedAvg):
    """A strategy defined the documented way: the global model becomes the first silo's update."""

    Settings = FirstSiloWinsSettings

    def aggregate(self, current, updates):
        first = next(iter(updates))
        return dict(first.state)


def test_a_strategy_registered_outside_fedsilo_runs_a_federation(tmp_path):
    assert STRATEGIES["first_silo_wins"] is FirstSiloWins
    result, tracker = run(tmp_path, "federation.strategy=first_silo_wins", "federation.rounds=1")
    clinic_a = tracker.silos["clinic-a"]
    assert clinic_a["global_f1_macro"][1] == clinic_a["local_f1_macro"][1]  # the same weights
    assert result.rounds == 1 and 1 in tracker.models


def altered(alter) -> InProcess:
    """The real silos, each reply passed through `alter(silo, step, reply)` (raise: no answer)."""

    def handler(scenario, silo, step):
        return alter(silo, step, handle(scenario, silo, step))

    return InProcess(handler)


def clinic_b_does_not_fit(silo, step, reply):
    if silo == "clinic-b" and isinstance(step, Fit):
        raise TimeoutError("clinic-b is down")
    return reply


def test_a_silo_that_does_not_answer_is_absent_and_reported(tmp_path):
    events = Events()
    result, tracker = run(
        tmp_path, "federation.min_silos=1", transport=altered(clinic_b_does_not_fit), reporters=[events]
    )
    left_out = ("fedsilo.silo.left-out", "clinic-b")
    assert events.names == [left_out, left_out, ("fedsilo.champion.moved", None)]
    assert events.rounds == [0, 1, 2] and events.ending[1] is False
    assert tracker.silos["clinic-b"]["answered"] == {1: 0.0, 2: 0.0}
    assert tracker.tags[None]["fedsilo.absent.round_1"] == "clinic-b"
    assert result.rounds == 2


def test_below_quorum_the_job_fails_and_leaves_no_weights(tmp_path):
    events = Events()
    with pytest.raises(FederationError, match="round 1: only 1 of 2 silos answered"):
        run(tmp_path, transport=altered(clinic_b_does_not_fit), reporters=[events])
    assert events.ending[1] is True and "FAILED" in events.ending[0]
    assert not list((tmp_path / "jobs").rglob("*.safetensors"))


def poison_clinic_b(silo, step, reply):
    """clinic-b's updates hold NaN (a broken or dishonest silo), written with a valid checksum."""
    if silo == "clinic-b" and isinstance(step, Fit):
        state = read_state(reply.update)
        state = {k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in state.items()}
        return replace(reply, update=write_state(state, reply.update.uri))
    return reply


def test_a_poisoned_update_is_refused_and_no_weights_are_left_behind(tmp_path):
    result, tracker = run(
        tmp_path, "federation.min_silos=1", "tracking.log_models=false", transport=altered(poison_clinic_b)
    )
    assert result.rounds == 2 and tracker.silos["clinic-b"]["answered"] == {1: 0.0, 2: 0.0}
    assert "NaN" in tracker.tags["clinic-b"]["fedsilo.refused.round_1"]
    assert "clinic-b: " in tracker.tags[None]["fedsilo.refused.round_2"]
    assert all(math.isfinite(v) for v in tracker.rounds[2].values())
    assert not list((tmp_path / "jobs").rglob("*.safetensors"))  # refused updates and the final model too


def impostor(silo, step, reply):
    """clinic-b answers its fits in clinic-a's name; its evaluations are garbage."""
    if silo == "clinic-b" and isinstance(step, Fit):
        return replace(reply, silo="clinic-a")
    if silo == "clinic-b" and isinstance(step, Evaluate):
        return replace(reply, confusion=[[-9]])
    return reply


def test_a_reply_speaks_only_for_the_silo_it_was_asked(tmp_path):
    result, tracker = run(
        tmp_path, "federation.min_silos=1", "federation.rounds=1", transport=altered(impostor)
    )
    assert result.rounds == 1 and tracker.rounds[1]["silos_answered"] == 1
    assert "names silo 'clinic-a'" in tracker.tags["clinic-b"]["fedsilo.refused.round_1"]
    assert tracker.rounds[1]["silos_evaluated"] == 1  # clinic-b's negative confusion matrix is refused
    assert "confusion" in tracker.tags["clinic-b"]["fedsilo.refused.round_1.evaluation"]


def test_an_update_anywhere_but_its_own_path_is_refused_and_not_deleted(tmp_path):
    """A reply naming the global model as its update deletes nothing and takes no part."""

    def points_at_the_global_model(silo, step, reply):
        if silo == "clinic-b" and isinstance(step, Fit):
            return replace(reply, update=step.weights)
        return reply

    result, tracker = run(tmp_path, "federation.min_silos=1", transport=altered(points_at_the_global_model))
    assert result.rounds == 2 and tracker.rounds[2]["silos_answered"] == 1
    assert "not at" in tracker.tags["clinic-b"]["fedsilo.refused.round_1"]


def test_the_silo_matrix_is_one_step_per_silo_and_takes_only_known_models(tmp_path):
    asked = Counter()

    def count_and_forge(silo, step, reply):
        asked[step.kind] += silo == "clinic-a"
        if silo == "clinic-b" and isinstance(step, Score):
            return replace(reply, models={"(forged)": reply.models["clinic-a (local)"]})
        return reply

    three = "silos=[{name: clinic-a}, {name: clinic-b}, {name: clinic-c}]"
    _, tracker = run(tmp_path, three, "federation.rounds=1", transport=altered(count_and_forge))
    assert asked["evaluate"] == 2 and asked["score"] == 1  # rounds 0 and 1, then one matrix step
    matrix = tracker.matrix
    assert list(matrix.index) == [
        "clinic-a (local)",
        "clinic-b (local)",
        "clinic-c (local)",
        "global",
        "alone",
    ]
    assert matrix.loc["clinic-a (local)"].notna().tolist() == [True, False, True]  # clinic-b forged
    assert matrix.loc["global"].notna().all()


def test_an_unknown_step_is_an_error_that_names_it():
    @dataclass(frozen=True)
    class Unserved(Step):
        kind: ClassVar[str] = "unserved-test-step"

    scenario = load_scenario(REPO / "scenarios" / "smoke.yaml")
    with pytest.raises(
        UnknownKind,
        match="unserved-test-step.*accepted: .*evaluate, fit, keep, mask, prepare, score",
    ):
        handle(scenario, "clinic-a", Unserved())
    with pytest.raises(UnknownKind, match="'nonesuch'"):
        load_step({"kind": "nonesuch"})


def test_weights_in_memory_give_the_same_job_as_files_and_leave_nothing_behind(tmp_path):
    from fedsilo import weights

    _, on_disk = run(tmp_path / "files")
    _, in_memory = run(tmp_path / "memory", exchange="memory://tests")
    for round_index, model in on_disk.models.items():
        for name, tensor in model.items():
            assert torch.equal(in_memory.models[round_index][name], tensor), (round_index, name)
    assert in_memory.matrix.equals(on_disk.matrix)
    assert not weights.in_memory_uris("memory://tests/")
