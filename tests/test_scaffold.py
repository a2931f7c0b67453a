"""SCAFFOLD (Karimireddy et al. 2020, option II) against a NumPy transcription of the paper's
rules: the server's step and control variate on a hand-made two-silo case, and one silo's
corrected plain-SGD steps and control-variate update on a softmax regression."""

import numpy as np
import pytest
import torch

from fedsilo.drift import ControlVariate, ScaffoldRound
from fedsilo.modeling import EncodedSet
from fedsilo.strategies import RunFacts, Scaffold, SiloUpdate
from fedsilo.training import FitSettings, fit

K, LR = 4, 0.5


def facts(silos: int = 2) -> RunFacts:
    return RunFacts(silos, LR, K, 1, 8, {})


def test_the_server_step_and_control_variate_follow_the_paper_on_two_silos():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 2))
    strategy = Scaffold()
    strategy.bind(facts())
    c = np.zeros_like(x)
    for _ in range(3):  # the control variate carries across rounds
        y = [x + rng.normal(scale=0.1, size=x.shape) for _ in range(2)]
        updates = [SiloUpdate(f"s{i}", {"w": torch.tensor(y[i])}, 10) for i in range(2)]
        new = strategy.aggregate({"w": torch.tensor(x)}, iter(updates))
        # the paper, option II, full participation (N = |S| = 2), global step size 1:
        delta_c = [-c - (y[i] - x) / (K * LR) for i in range(2)]
        x, c = x + np.mean([y[i] - x for i in range(2)], axis=0), c + np.sum(delta_c, axis=0) / 2
        np.testing.assert_allclose(new["w"].numpy(), x, rtol=1e-12)
        np.testing.assert_allclose(strategy.fit_tensors()["w"].numpy(), c, rtol=1e-6, atol=1e-7)
    resumed = Scaffold()
    resumed.load_state_dict(strategy.state_dict())
    assert torch.equal(resumed.fit_tensors()["w"], strategy.fit_tensors()["w"])


def test_a_silo_absent_from_a_round_moves_the_server_variate_by_its_share_only():
    strategy = Scaffold()
    strategy.bind(facts(silos=4))
    x, y = torch.zeros(2), torch.ones(2)
    strategy.aggregate({"w": x}, iter([SiloUpdate("s0", {"w": y}, 5)]))
    expected = -(1 / (K * LR)) / 4  # (1/N) dc_0, dc_0 = -0 - (y - x) / (K lr)
    assert strategy.fit_tensors()["w"].tolist() == pytest.approx([expected] * 2)


class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 2, bias=False)

    def forward(self, pixel_values):
        return self.layer(pixel_values)


def softmax_gradient(w: np.ndarray, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """d/dW of the mean cross-entropy of softmax(features W^T)."""
    logits = features @ w.T
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1
    return p.T @ features / len(labels)


def test_a_silos_corrected_sgd_steps_and_its_variate_follow_the_paper(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSILO_SILO_STATE", str(tmp_path))
    rng = np.random.default_rng(1)
    features, labels = rng.normal(size=(6, 3)), np.array([0, 1, 0, 1, 1, 0])
    data = EncodedSet({"pixel_values": torch.tensor(features, dtype=torch.float32)}, torch.tensor(labels))
    model = Linear()
    x = model.layer.weight.detach().double().numpy().copy()
    c = rng.normal(scale=0.05, size=x.shape)  # the server's variate this round
    variate = ControlVariate("clinic-a")
    c_i = rng.normal(scale=0.05, size=x.shape)
    variate.rounds.remember("job", 1, {"layer.weight": torch.tensor(c_i, dtype=torch.float32)})
    settings = FitSettings(epochs=1, batch_size=6, learning_rate=1e-3, optimizer="adamw", seed=0, steps=K)
    server = {"layer.weight": torch.tensor(c, dtype=torch.float32)}
    config = {"scaffold_learning_rate": LR}
    settings, scaffold = ScaffoldRound.begin(variate, model, settings, config, server, "job", 2, set())
    fit(model, data, settings)
    scaffold.finish(K)
    c_i32 = c_i.astype(np.float32).astype(np.float64)
    y = x.copy()
    for _ in range(K):  # y <- y - lr (g(y) - c_i + c), one full batch per step
        y -= LR * (softmax_gradient(y, features, labels) - c_i32 + c.astype(np.float32))
    np.testing.assert_allclose(model.layer.weight.detach().double().numpy(), y, rtol=1e-4, atol=1e-6)
    expected = c_i32 - c.astype(np.float32) + (x - y) / (K * LR)  # option II
    kept = variate.rounds.latest("job")["layer.weight"].double().numpy()
    np.testing.assert_allclose(kept, expected, rtol=1e-4, atol=1e-6)
    assert variate.rounds.latest("job", before_round=2)["layer.weight"].double().numpy() == pytest.approx(
        c_i32
    )


def test_without_scaffold_in_the_config_the_settings_are_untouched(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSILO_SILO_STATE", str(tmp_path))
    settings = FitSettings(epochs=1, batch_size=6, learning_rate=1e-3, optimizer="adamw", seed=0)
    same, scaffold = ScaffoldRound.begin(ControlVariate("a"), Linear(), settings, {}, {}, "job", 1, set())
    assert same is settings and scaffold is None
