import inspect
from typing import Literal

import numpy as np
import pytest
import torch
from pydantic import Field

from fedsilo.errors import UnknownKind
from fedsilo.scenario import FederationSpec
from fedsilo.strategies import (
    STRATEGIES,
    FedAvg,
    FedAvgM,
    FedAvgMSettings,
    FedProx,
    ServerStepSettings,
    SiloUpdate,
    WeightedSum,
    make_strategy,
    register_strategy,
    strategy_class,
    strategy_options,
)


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
    assert total.tensors_held == 1 and total.count == 50 and total.total_examples == 50
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
    assert FedAvg(server_learning_rate=0.5).apply(current, average)["w"].item() == pytest.approx(1.0)


def test_fedavgm_accumulates_momentum_across_rounds():
    strategy = FedAvgM(server_learning_rate=1.0, server_momentum=0.5)
    w = strategy.apply({"w": torch.tensor([0.0])}, {"w": torch.tensor([1.0])})  # v = 1 -> w = 1
    assert w["w"].item() == pytest.approx(1.0)
    w = strategy.apply(w, {"w": torch.tensor([2.0])})  # delta 1, v = 0.5 + 1 -> w = 2.5
    assert w["w"].item() == pytest.approx(2.5)


def test_the_registry_builds_each_strategy_from_its_scenario_fields():
    built = make_strategy(FederationSpec(strategy="fedavgm", server_momentum=0.5))
    assert isinstance(built, FedAvgM) and built.settings == FedAvgMSettings(server_momentum=0.5)
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


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_each_default_is_written_once_in_the_strategys_record(name):
    cls = STRATEGIES[name]
    # the constructor restates nothing: it takes the record's fields as keywords
    assert all(p.kind is p.VAR_KEYWORD for p in list(inspect.signature(cls.__init__).parameters.values())[1:])
    # the scenario holds no copy of a strategy setting: its default is the record's
    assert not set(FederationSpec.model_fields) & set(cls.Settings.options())
    assert cls().settings == cls.Settings() == FederationSpec(strategy=name).strategy
    assert make_strategy(FederationSpec(strategy=name)).settings == cls.Settings()
    assert cls.name == cls.Settings().name == name


def test_adaptive_defaults_differ_from_fedavgs_where_the_paper_says():
    assert strategy_options()["fedadagrad"] == ("server_learning_rate", "beta1", "tau")  # no beta2
    assert STRATEGIES["fedadam"]().settings.server_learning_rate == 0.01
    assert STRATEGIES["fedavg"]().settings.server_learning_rate == 1.0


def test_unknown_strategy_names_the_accepted_ones():
    with pytest.raises(UnknownKind, match="unknown strategy 'fedsgd'; accepted: fedadagrad, fedadam"):
        strategy_class("fedsgd")


def test_settings_outside_the_record_are_refused():
    with pytest.raises(ValueError, match="beta2"):
        STRATEGIES["fedadagrad"](beta2=0.9)
    with pytest.raises(TypeError):
        FedAvg(0.5)  # keywords only: positions would depend on the record's field order


def test_a_strategy_needs_its_own_record_to_register():
    class Unnamed(FedAvg):
        name = "unnamed"

    with pytest.raises(ValueError, match="Unnamed needs its own settings record"):
        register_strategy(Unnamed)

    class ClippedSettings(ServerStepSettings):
        name: Literal["clipped_test"] = "clipped_test"
        clip: float = Field(0.01, gt=0)

    class Clipped(FedAvg):
        Settings = ClippedSettings

        def direction(self, name, delta):
            return delta.clamp(-self.settings.clip, self.settings.clip)

    assert Clipped.name == "clipped_test"  # the name is the record's
    try:
        register_strategy(Clipped)
        built = make_strategy(FederationSpec(strategy={"name": "clipped_test", "clip": 0.5}))
        assert built.apply({"w": torch.zeros(1)}, {"w": torch.ones(1)})["w"].item() == 0.5
    finally:
        STRATEGIES.pop("clipped_test", None)
