"""Ditto (evaluation.personalization: ditto): each silo's personal model trains every round beside
the federated one, pulled toward the global model by lambda; with lambda 0 it is the silo's own
rows alone, and it is the personalized candidate the silo may keep."""

import pytest
import torch

from fedsilo.ditto import SEED_KEY
from fedsilo.modeling import load_shared, shared_state
from fedsilo.paths import JobPaths
from fedsilo.scenario import load_scenario
from fedsilo.silo import initial_state, participant, release_participants
from fedsilo.training import fit
from tests.conftest import REPO
from tests.engine import run
from tests.test_keeping import ROWS, Capturing

DITTO = ["evaluation.personalization=ditto", "federation.rounds=2", "federation.local_steps=3", ROWS]


@pytest.fixture(autouse=True)
def own_state(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSILO_SILO_STATE", str(tmp_path / "state"))


def ditto_model(tmp_path, silo: str, before_round: int | None = None):
    """The silo's personal model after the job's last round (or the last before `before_round`),
    read from its own store."""
    scenario = load_scenario(REPO / "scenarios" / "smoke.yaml", DITTO)
    try:
        store = participant(scenario, silo).ditto.rounds
        return store.latest(JobPaths.under(tmp_path / "jobs", "job").root, before_round)
    finally:
        release_participants()


def alone_round_by_round(overrides: list[str], silo: str) -> dict:
    """The starting model trained on the silo's rows only, with Ditto's seeds, steps per round and
    the job's learning-rate course."""
    scenario = load_scenario(REPO / "scenarios" / "smoke.yaml", overrides)
    try:
        member = participant(scenario, silo)
        load_shared(member.model, initial_state(scenario, member.input_shape))
        for round_index in (1, 2):
            settings = member.on_course(member.settings(SEED_KEY + round_index, 3), round_index)
            fit(member.model, member.train, settings)
        return {name: tensor.clone() for name, tensor in shared_state(member.model).items()}
    finally:
        release_participants()


def test_with_lambda_zero_the_ditto_model_is_the_silos_rows_alone(tmp_path):
    run(tmp_path, *DITTO, "evaluation.ditto_lambda=0")
    ours, reference = ditto_model(tmp_path, "clinic-b"), alone_round_by_round(DITTO, "clinic-b")
    assert ours is not None and ours.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(ours[name], tensor), name


def test_a_larger_lambda_keeps_the_ditto_model_closer_to_the_global_one(tmp_path):
    distances, sgd = [], ["federation.optimizer=sgd", "federation.learning_rate=0.05"]
    for strength in (0, 10):  # lambda x lr = 0.5
        folder = tmp_path / str(strength)
        _, tracker = run(folder, *DITTO, *sgd, f"evaluation.ditto_lambda={strength}")
        ours, anchor = ditto_model(folder, "clinic-a", 2), tracker.models[0]  # round 1's v and w
        distances.append(sum(float((ours[n] - anchor[n]).pow(2).sum()) for n in ours if n in anchor) ** 0.5)
    assert distances[1] < 0.8 * distances[0]  # measured 0.64x after 3 steps


def test_the_ditto_model_is_the_personalized_candidate_a_silo_may_keep(tmp_path):
    silos = Capturing()
    result, tracker = run(tmp_path, *DITTO, transport=silos)
    assert "personalize" not in silos.kinds
    for silo, report in silos.kept.items():
        assert set(report.validation) == {"global", "personalized", "alone"}
        assert report.personalized is not None
        assert tracker.silos[silo]["personalized_accuracy"][2] == pytest.approx(report.personalized.accuracy)
        assert report.validation[report.kept] >= report.validation["alone"]
