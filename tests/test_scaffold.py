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
    c = rng.normal(scale=0.05, size=x.shape).astype(np.float32)  # the server's variate this round
    c_i = rng.normal(scale=0.05, size=x.shape).astype(np.float32)  # the silo's, after round 1
    variate = ControlVariate("clinic-a")
    variate.keep("job", 1, {"layer.weight": torch.tensor(c_i)}, {}, {})  # round 1, not counted
    settings = FitSettings(epochs=1, batch_size=6, learning_rate=1e-3, optimizer="adamw", seed=0, steps=K)
    server = {"layer.weight": torch.tensor(c)}
    config = {"scaffold_learning_rate": LR}
    settings, scaffold = ScaffoldRound.begin(variate, model, settings, config, server, "job", 2, set())
    fit(model, data, settings)
    scaffold.finish(K)
    y = x.copy()
    for _ in range(K):  # y <- y - lr (g(y) - c_i + c), one full batch per step
        y -= LR * (softmax_gradient(y, features, labels) - c_i + c)
    np.testing.assert_allclose(model.layer.weight.detach().double().numpy(), y, rtol=1e-4, atol=1e-6)
    # counted in full by the server, round 2's change is option II's: c_i - c + (x - y) / (K lr)
    counted = {"counted/clinic-a": torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64)}
    after = variate.own("job", 3, server | counted)["layer.weight"].double().numpy()
    np.testing.assert_allclose(after, c_i - c + (x - y) / (K * LR), rtol=1e-4, atol=1e-6)
    # not counted (absent, refused, rolled back): c_i stays what it was
    assert np.allclose(variate.own("job", 3, server)["layer.weight"].numpy(), c_i)


def test_the_server_variate_stays_the_mean_of_the_silos_through_clipping_and_a_lost_reply(
    tmp_path, monkeypatch
):
    """The invariant c = (1/N) sum_i c_i, which SCAFFOLD's correction relies on: a silo commits
    exactly the change the server counted, clipped or not at all."""
    from fedsilo.engine import influence
    from fedsilo.validation import update_norm

    monkeypatch.setenv("FEDSILO_SILO_STATE", str(tmp_path))
    rng = np.random.default_rng(2)
    targets = [rng.normal(size=4), rng.normal(size=4), rng.normal(size=4) + 40]  # the third is clipped
    strategy, variates = Scaffold(), [ControlVariate(f"s{i}") for i in range(3)]
    strategy.bind(RunFacts(3, LR, K, 1, 8, {}))
    x = np.zeros(4)
    for round_index in range(1, 8):
        strategy.configure_fit(round_index)
        server = strategy.fit_tensors()
        c = server.get("w", torch.zeros(4)).double().numpy()
        states = {}
        for i, variate in enumerate(variates):
            own = variate.own("job", round_index, server).get("w", torch.zeros(4)).double().numpy()
            y = x.copy()
            for _ in range(K):  # quadratic loss |y - target|^2 / 2, corrected plain SGD
                y -= LR * (y - targets[i] - own + c)
            drift = {"w": torch.tensor((x - y) / (K * LR))}
            variate.keep("job", round_index, {"w": torch.tensor(own)}, {"w": torch.tensor(c)}, drift)
            if not (i == 1 and round_index == 3):  # s1's reply is lost in round 3
                states[f"s{i}"] = {"w": torch.tensor(y)}
        current = {"w": torch.tensor(x)}
        norms = {silo: update_norm(state, current) for silo, state in states.items()}
        bound = influence.norm_bound(list(norms.values()))
        updates = [
            SiloUpdate(
                silo,
                influence.clipped(s, current, norms[silo], bound),
                10,
                influence.scale(norms[silo], bound),
            )
            for silo, s in states.items()
        ]
        x = strategy.aggregate(current, iter(updates))["w"].double().numpy()
    server = strategy.fit_tensors()
    mean = sum(v.own("job", 8, server).get("w", torch.zeros(4)).double() for v in variates) / 3
    np.testing.assert_allclose(server["w"].double().numpy(), mean.numpy(), atol=1e-4)


def test_without_scaffold_in_the_config_the_settings_are_untouched(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSILO_SILO_STATE", str(tmp_path))
    settings = FitSettings(epochs=1, batch_size=6, learning_rate=1e-3, optimizer="adamw", seed=0)
    same, scaffold = ScaffoldRound.begin(ControlVariate("a"), Linear(), settings, {}, {}, "job", 1, set())
    assert same is settings and scaffold is None
