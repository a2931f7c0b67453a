"""FedAdam, FedYogi and FedAdagrad against a NumPy transcription of Reddi et al. 2021, Algorithm 2."""

import numpy as np
import pytest
import torch

from fedsilo.strategies import FedAdagrad, FedAdam, FedYogi, SiloUpdate


def reference(rule, rounds, lr, beta1, beta2, tau):
    """The paper's server update on float64 arrays: x, m, v per round from (current, average) pairs."""
    x, m, v = rounds[0][0].copy(), None, None
    trace = []
    for _, average in rounds:
        delta = average - x
        m = (1 - beta1) * delta if m is None else beta1 * m + (1 - beta1) * delta
        v = np.full_like(delta, tau**2) if v is None else v
        if rule == "adagrad":
            v = v + delta**2
        elif rule == "adam":
            v = beta2 * v + (1 - beta2) * delta**2
        else:
            v = v - (1 - beta2) * delta**2 * np.sign(v - delta**2)
        x = x + lr * m / (np.sqrt(v) + tau)
        trace.append((x.copy(), m.copy(), v.copy()))
    return trace


@pytest.mark.parametrize(("cls", "rule"), [(FedAdam, "adam"), (FedYogi, "yogi"), (FedAdagrad, "adagrad")])
def test_three_rounds_match_the_papers_update_rule(cls, rule):
    rng = np.random.default_rng(3)
    lr, beta1, beta2, tau = 0.05, 0.8, 0.9, 1e-2
    settings = {"server_learning_rate": lr, "beta1": beta1, "beta2": beta2, "tau": tau}
    strategy = cls(**{k: v for k, v in settings.items() if k in cls.Settings.options()})  # adagrad: no beta2
    x = torch.tensor(rng.normal(size=6), dtype=torch.float64)
    rounds_np, ours = [], []
    for _ in range(3):
        updates = [rng.normal(size=6) * s for s in (0.1, 1.0)]  # two silos, n = 1 and 3
        average = (1 * updates[0] + 3 * updates[1]) / 4
        rounds_np.append((x.numpy().copy(), average))
        silo_updates = [
            SiloUpdate(name, {"w": torch.tensor(u)}, n) for name, u, n in zip("ab", updates, (1, 3))
        ]
        x = strategy.aggregate({"w": x}, silo_updates)["w"]
        ours.append((x.numpy().copy(), strategy.m["w"].numpy().copy(), strategy.v["w"].numpy().copy()))
    # the reference continues from its own x; feed it the same averages
    expected = reference(rule, [(rounds_np[0][0], a) for _, a in rounds_np], lr, beta1, beta2, tau)
    for (x_ours, m_ours, v_ours), (x_ref, m_ref, v_ref) in zip(ours, expected):
        np.testing.assert_allclose(m_ours, m_ref, rtol=1e-12)
        np.testing.assert_allclose(v_ours, v_ref, rtol=1e-12)
        np.testing.assert_allclose(x_ours, x_ref, rtol=1e-12)


def test_tau_bounds_the_step_and_state_resumes():
    strategy = FedAdam(server_learning_rate=0.1, tau=1e-3)
    new = strategy.aggregate(
        {"w": torch.zeros(3)}, [SiloUpdate("a", {"w": torch.tensor([5.0, -5.0, 0.0])}, 1)]
    )
    # first step: m = 0.1 * delta, v = 0.99 tau^2 + 0.01 delta^2 -> about lr * 0.1 / 0.1 = lr per coordinate
    assert torch.allclose(new["w"][:2].abs(), torch.full((2,), 0.1), atol=1e-3)
    assert new["w"][2] == 0
    resumed = FedAdam(server_learning_rate=0.1, tau=1e-3)
    resumed.load_state_dict(strategy.state_dict())
    step = [SiloUpdate("a", {"w": torch.ones(3)}, 1)]
    assert torch.equal(strategy.aggregate(new, step)["w"], resumed.aggregate(new, step)["w"])


def test_integer_buffers_are_not_stepped():
    strategy = FedYogi()
    update = {"w": torch.ones(2), "steps": torch.tensor(7)}
    new = strategy.aggregate({"w": torch.zeros(2), "steps": torch.tensor(3)}, [SiloUpdate("a", update, 2)])
    assert new["steps"].item() == 7 and "steps" not in strategy.m
