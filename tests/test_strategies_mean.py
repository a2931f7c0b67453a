import numpy as np
import pytest
import torch

from fedsilo.scenario import FederationSpec
from fedsilo.strategies import STRATEGIES, FedAvg, FedAvgM, FedProx, SiloUpdate, WeightedSum, make_strategy


def fedavg(states, sizes):
    total = WeightedSum()
    for state, n in zip(states, sizes):
        total.add(state, n)
    return FedAvg().apply(states[0], total.mean())


def test_two_silos_by_hand():
    a = {"w": torch.tensor([1.0, 4.0])}
    b = {"w": torch.tensor([4.0, 1.0])}
    # n = 1 and 2: (1*[1,4] + 2*[4,1]) / 3 = [3, 2]
    assert torch.equal(fedavg([a, b], [1, 2])["w"], torch.tensor([3.0, 2.0]))


@pytest.mark.parametrize("sizes", [[5, 5, 5], [1, 10, 1000, 100_000], [1, 1_000_000], list(range(1, 11))])
def test_matches_numpy_reference_on_random_updates(sizes):
    rng = np.random.default_rng(len(sizes))
    arrays = [{"a": rng.normal(size=(7, 3)), "b": rng.normal(size=11)} for _ in sizes]
    states = [{k: torch.tensor(v, dtype=torch.float32) for k, v in s.items()} for s in arrays]
    result = fedavg(states, sizes)
    n = np.array(sizes, dtype=np.float64)
    for key in ("a", "b"):
        expected = (
            sum(nk * s[key].astype(np.float32).astype(np.float64) for nk, s in zip(n, arrays)) / n.sum()
        )
        np.testing.assert_allclose(result[key].numpy(), expected, atol=1e-6, rtol=0)
        assert result[key].dtype == torch.float32


def test_low_precision_tensors_are_averaged_wide_and_cast_back():
    states = [{"w": torch.full((4,), v, dtype=torch.bfloat16)} for v in (1.0, 2.0, 3.0)]
    result = fedavg(states, [1, 1, 1])
    assert result["w"].dtype == torch.bfloat16
    assert torch.equal(result["w"], torch.full((4,), 2.0, dtype=torch.bfloat16))


def test_integer_buffers_take_the_maximum_not_an_average():
    states = [
        {"w": torch.zeros(2), "num_batches_tracked": torch.tensor(3), "ids": torch.arange(4)},
        {"w": torch.ones(2), "num_batches_tracked": torch.tensor(10), "ids": torch.arange(4)},
    ]
    result = fedavg(states, [1, 1])
    assert result["num_batches_tracked"].dtype == torch.int64
    assert result["num_batches_tracked"].item() == 10
    assert torch.equal(result["ids"], torch.arange(4))


def test_accumulator_holds_one_model_whatever_the_number_of_silos():
    total = WeightedSum()
    for k in range(50):
        total.add({"w": torch.full((3,), float(k))}, 1)
    assert len(total._sums) == 1 and total.count == 50 and total.total_examples == 50
    assert torch.allclose(total.mean()["w"], torch.full((3,), 24.5))


def test_rejects_empty_and_mismatched_updates():
    total = WeightedSum()
    with pytest.raises(ValueError, match="no silo update"):
        total.mean()
    with pytest.raises(ValueError, match="positive"):
        total.add({"w": torch.zeros(1)}, 0)
    total.add({"w": torch.zeros(1)}, 1)
    with pytest.raises(ValueError, match="differ"):
        total.add({"v": torch.zeros(1)}, 1)


def test_server_learning_rate_scales_the_step():
    current, average = {"w": torch.tensor([0.0])}, {"w": torch.tensor([2.0])}
    assert FedAvg(0.5).apply(current, average)["w"].item() == pytest.approx(1.0)


def test_fedavgm_accumulates_momentum_across_rounds():
    strategy = FedAvgM(server_learning_rate=1.0, server_momentum=0.5)
    w = strategy.apply({"w": torch.tensor([0.0])}, {"w": torch.tensor([1.0])})  # v = 1 -> w = 1
    assert w["w"].item() == pytest.approx(1.0)
    w = strategy.apply(w, {"w": torch.tensor([2.0])})  # delta 1, v = 0.5 + 1 -> w = 2.5
    assert w["w"].item() == pytest.approx(2.5)


def test_the_registry_builds_each_strategy_from_its_scenario_fields():
    built = make_strategy(FederationSpec(strategy="fedavgm", server_momentum=0.5))
    assert isinstance(built, FedAvgM) and built.server_momentum == 0.5 and built.server_learning_rate == 1.0
    assert make_strategy(FederationSpec(strategy="fedprox")).configure_fit(1) == {"proximal_mu": 0.01}
    assert set(STRATEGIES) >= {
        "fedavg",
        "fedavgm",
        "fedprox",
        "fedadam",
        "fedyogi",
        "fedadagrad",
        "median",
        "trimmed_mean",
    }


def test_fedavgm_state_round_trips():
    strategy = FedAvgM(server_momentum=0.5)
    strategy.apply({"w": torch.tensor([0.0])}, {"w": torch.tensor([1.0])})
    resumed = FedAvgM(server_momentum=0.5)
    resumed.load_state_dict(strategy.state_dict())
    a = strategy.apply({"w": torch.tensor([1.0])}, {"w": torch.tensor([2.0])})
    b = resumed.apply({"w": torch.tensor([1.0])}, {"w": torch.tensor([2.0])})
    assert torch.equal(a["w"], b["w"]) and a["w"].item() == pytest.approx(2.5)


def test_fedprox_aggregates_exactly_as_fedavg():
    current = {"w": torch.tensor([0.0, 1.0])}
    updates = [
        SiloUpdate("a", {"w": torch.tensor([1.0, 4.0])}, 1),
        SiloUpdate("b", {"w": torch.tensor([4.0, 1.0])}, 2),
    ]
    assert torch.equal(
        FedProx(proximal_mu=0.1).aggregate(current, updates)["w"], FedAvg().aggregate(current, updates)["w"]
    )


def test_constructors_name_the_bad_parameter():
    with pytest.raises(ValueError, match="server_momentum"):
        FedAvgM(server_momentum=1.5)
    with pytest.raises(ValueError, match="proximal_mu"):
        FedProx(proximal_mu=-1)


def test_summing_leaves_the_silo_updates_untouched():
    # the sum is accumulated in place; the first update must be copied, not aliased
    a = {"w": torch.tensor([1.0, 2.0]), "h": torch.tensor([1.0], dtype=torch.bfloat16)}
    b = {"w": torch.tensor([3.0, 4.0]), "h": torch.tensor([3.0], dtype=torch.bfloat16)}
    before = {k: v.clone() for k, v in a.items()}
    total = WeightedSum()
    total.add(a, 1)
    total.add(b, 3)
    assert all(torch.equal(a[k], before[k]) for k in a)
    assert torch.equal(total.mean()["w"], torch.tensor([2.5, 3.5]))
    assert total.mean()["h"].dtype == torch.bfloat16 and total.mean()["h"].item() == 2.5
