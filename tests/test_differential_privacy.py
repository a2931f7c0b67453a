"""DP-SGD at the silos and central DP at the coordinator: the privacy spent, as Opacus counts it."""

import math

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from fedsilo.engine import run_job
from fedsilo.errors import FederationError
from fedsilo.privacy import secagg
from fedsilo.privacy.dp import dp_fit, plan
from fedsilo.scenario import DPSpec, ScenarioError, load_scenario
from fedsilo.steps import Fit
from fedsilo.training import FitSettings
from fedsilo.transport import InProcess
from fedsilo.weights import read_state
from models import build_cnn
from tests.conftest import REPO, shared_file
from tests.engine import Recorder, run
from tests.test_training import toy_images

SMOKE_TRAIN = 30  # rows each smoke silo trains on (40 generated, a quarter held out)
SMOKE_BATCH = 8


@pytest.fixture(autouse=True)
def silo_state(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSILO_SILO_STATE", str(tmp_path / "silo-state"))


def opacus_epsilon(noise: float, sample_rate: float, steps: int, delta: float) -> float:
    """The accountant stepped once per optimizer step, as Opacus's PrivacyEngine does it."""
    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=noise, sample_rate=sample_rate)
    return accountant.get_epsilon(delta)


class Keeping(InProcess):
    """In-process silos that keep a copy of every plain update the coordinator receives."""

    def __init__(self):
        super().__init__()
        self.updates = {}

    def ask(self, scenario, step, silos):
        answers = super().ask(scenario, step, silos)
        if isinstance(step, Fit):
            kept = {
                (step.round_index, s): read_state(r.update) for s, r in answers.replies.items() if r.update
            }
            self.updates.update(kept)
        return answers


def test_each_silo_logs_the_epsilon_opacus_accounts_for_every_round(tmp_path):
    _, tracker = run(tmp_path, "privacy.dp.target_epsilon=4", "federation.rounds=3")
    q, steps = SMOKE_BATCH / SMOKE_TRAIN, math.ceil(SMOKE_TRAIN / SMOKE_BATCH)
    noise = get_noise_multiplier(target_epsilon=4, target_delta=1e-5, sample_rate=q, steps=3 * steps)
    for silo in ("clinic-a", "clinic-b"):
        logged = tracker.silos[silo]["epsilon"]
        expected = {r: opacus_epsilon(noise, q, r * steps, 1e-5) for r in (1, 2, 3)}
        assert logged == pytest.approx(expected, rel=1e-9)
    assert tracker.rounds[3]["max_silo_epsilon"] <= 4
    assert tracker.rounds[3]["max_silo_epsilon"] > 3.9  # the whole budget is spent, not a fraction


def test_a_silo_whose_budget_is_spent_stops_and_says_so(tmp_path):
    first_round = opacus_epsilon(1.0, SMOKE_BATCH / SMOKE_TRAIN, 4, 1e-5)
    budget = f"privacy.dp.target_epsilon={first_round * 1.1:.4f}"
    with pytest.raises(FederationError) as error:
        run(tmp_path, "privacy.dp.noise_multiplier=1.0", budget, "federation.rounds=3")
    assert "round 2" in str(error.value) and "privacy.dp.target_epsilon" in str(error.value)


def test_dp_sgd_trains_the_encoder_and_leaves_the_embeddings_as_they_were(tmp_path):
    silos = Keeping()
    _, tracker = run(tmp_path, "privacy.dp.noise_multiplier=0.5", "federation.rounds=1", transport=silos)
    start, update = tracker.models[0], silos.updates[(1, "clinic-a")]
    changed = {n for n, t in update.items() if t.is_floating_point() and not torch.equal(t, start[n])}
    assert changed and not any("embeddings" in n for n in changed)
    assert any("encoder.layer.0.attention" in n for n in changed)
    assert any("classifier" in n for n in changed)


def test_dp_sgd_trains_the_cnn_whole_and_learns():
    data = toy_images(128)
    model = build_cnn(1, 16, 2, seed=0)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    settings = FitSettings(epochs=1, batch_size=16, learning_rate=1e-2, optimizer="sgd", seed=0, steps=40)
    dp = plan(DPSpec(noise_multiplier=0.3, max_grad_norm=1.0), len(data), settings, rounds=1)
    dp_fit(model, data, settings, dp)
    assert all(not torch.equal(before[n], t) for n, t in model.state_dict().items())
    with torch.no_grad():
        accuracy = (model(data.features["pixel_values"]).argmax(1) == data.labels).double().mean()
    assert accuracy > 0.8  # toy images are separable: DP-SGD with mild noise still learns them


def test_central_dp_clips_each_silo_and_counts_it_once(tmp_path):
    silos = Keeping()
    clip = "privacy.central_dp.clipping_norm=0.05"
    _, tracker = run(tmp_path, "privacy.central_dp.noise_multiplier=1e-9", clip, transport=silos)
    start, new = tracker.models[0], tracker.models[1]
    names = secagg.float_names(start)
    clipped = []
    for silo in ("clinic-a", "clinic-b"):
        local = silos.updates[(1, silo)]
        norm = math.sqrt(sum(float((local[n].double() - start[n].double()).pow(2).sum()) for n in names))
        assert norm > 0.05  # so clipping did something
        clipped.append({n: (local[n].double() - start[n].double()) * 0.05 / norm for n in names})
    for name in names:  # the unweighted mean of the clipped changes (the noise is 1e-9 * 0.05)
        expected = start[name].double() + (clipped[0][name] + clipped[1][name]) / 2
        torch.testing.assert_close(new[name].double(), expected, atol=1e-6, rtol=0)


def test_central_dp_through_secure_aggregation_clips_at_the_silo(tmp_path):
    overrides = ("privacy.central_dp.noise_multiplier=1e-9", "privacy.central_dp.clipping_norm=0.05")
    _, plain = run(tmp_path / "plain", *overrides)
    _, secure = run(tmp_path / "secure", *overrides, "privacy.secure_aggregation=true")
    for name, tensor in plain.models[1].items():
        torch.testing.assert_close(secure.models[1][name], tensor, atol=1e-6, rtol=0)


def test_privacy_options_that_cannot_hold_together_are_named():
    path = REPO / "scenarios" / "smoke.yaml"
    cases = {
        "evaluation.personalize_steps": ["privacy.dp.target_epsilon=4", "evaluation.personalize_steps=5"],
        "fedprox": ["privacy.dp.target_epsilon=4", "federation.strategy=fedprox"],
        "set target_epsilon, noise_multiplier or both": ["privacy.dp.delta=1e-5"],
        "privacy.central_dp": [
            "privacy.central_dp={noise_multiplier: 1, clipping_norm: 1}",
            "federation.strategy=median",
        ],
    }
    for expected, overrides in cases.items():
        with pytest.raises(ScenarioError, match=expected.replace(".", r"\.")):
            load_scenario(path, overrides)


def test_every_privacy_option_at_once_on_pneumonia_images(tmp_path):
    """The CNN path on real X-rays: DP-SGD at the silos, a masked sum, central noise on it."""
    small = tmp_path / "pneumonia-small.npz"
    with np.load(shared_file("pneumoniamnist", "pneumoniamnist.npz")) as full:
        np.savez(small, **{k: v[:200] for k, v in full.items()})
    overrides = [
        f"data.source.path={small}",
        "model.source=random",
        "federation.rounds=2",
        "privacy.secure_aggregation=true",
        "privacy.dp.target_epsilon=8",
        "privacy.central_dp={noise_multiplier: 1.0, clipping_norm: 1.0}",
    ]
    scenario = load_scenario(REPO / "scenarios" / "medical-imaging.yaml", overrides)
    tracker = Recorder()
    result = run_job(scenario, InProcess(), job="job", tracker=tracker)
    assert len(result.curve) == 3
    assert all(0 < e <= 8 for e in tracker.silos["hospital-a"]["epsilon"].values())
    central = [tracker.rounds[r]["central_epsilon"] for r in (1, 2)]
    assert central == pytest.approx([opacus_epsilon(1.0, 1.0, r, 1e-5) for r in (1, 2)])
