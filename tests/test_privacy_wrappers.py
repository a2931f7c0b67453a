"""Secure aggregation and central DP as strategy wrappers, from scripted replies (no training)."""

import math

import pytest

from fedsilo.engine.wrapping import Wrapper
from fedsilo.transport import InProcess
from tests.engine import run
from tests.scripted import Scripted, moved_by

THREE = "silos=[{name: clinic-a}, {name: clinic-b}, {name: clinic-c}]"
COUNTS = {"clinic-a": 10, "clinic-b": 30, "clinic-c": 60}
SHIFT = {"clinic-a": 0.01, "clinic-b": 0.02, "clinic-c": -0.03}
SECURE = ["privacy.secure_aggregation=true", "federation.min_silos=2"]
ONE_ROUND = ["federation.rounds=1", "evaluation.test_fraction=0.25"]


@pytest.fixture(autouse=True)
def silo_state(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSILO_SILO_STATE", str(tmp_path / "silo-state"))


def fedavg_shift(silos) -> float:
    return sum(COUNTS[s] * SHIFT[s] for s in silos) / sum(COUNTS[s] for s in silos)


def test_plain_fedavg_of_scripted_updates_is_the_weighted_mean(tmp_path):
    _, tracker = run(tmp_path, THREE, *ONE_ROUND, transport=InProcess(Scripted(SHIFT, COUNTS)))
    assert moved_by(tracker.models[1], tracker.models[0]) == pytest.approx(fedavg_shift(COUNTS), abs=1e-6)


def test_secure_aggregation_gives_fedavg_and_survives_a_dropout_mid_masking(tmp_path):
    script = Scripted(SHIFT, COUNTS, drop_mask={"clinic-c"})
    _, tracker = run(tmp_path, THREE, *ONE_ROUND, *SECURE, transport=InProcess(script))
    secure_steps = [label for _, label in script.asked if label.split("-")[0] in ("share", "mask", "unmask")]
    # every silo masks once; the survivors' shares remove clinic-c's masks: no second masking
    assert secure_steps == ["share-round-1"] * 3 + ["mask-round-1-attempt-0"] * 3 + ["unmask-round-1"] * 2
    survivors = ["clinic-a", "clinic-b"]
    assert moved_by(tracker.models[1], tracker.models[0]) == pytest.approx(fedavg_shift(survivors), abs=1e-6)
    assert tracker.silos["clinic-c"]["answered"] == {1: 0.0}
    assert "masking" in tracker.tags["clinic-c"]["fedsilo.refused.round_1"]
    assert tracker.tags[None]["fedsilo.privacy"].startswith("secure aggregation")


def test_central_dp_counts_each_silo_once_and_clips_its_change(tmp_path):
    central = "privacy.central_dp={noise_multiplier: 1.0e-9, clipping_norm: 1.0e-3}"
    _, tracker = run(tmp_path, THREE, *ONE_ROUND, central, transport=InProcess(Scripted(SHIFT, COUNTS)))
    start, after = tracker.models[0], tracker.models[1]
    size = sum(t.numel() for t in start.values() if t.is_floating_point())
    per_coordinate = 1e-3 / math.sqrt(size)  # every change is far larger than the clipping norm
    expected = sum(math.copysign(per_coordinate, SHIFT[s]) for s in COUNTS) / 3
    assert moved_by(after, start) == pytest.approx(expected, rel=1e-3)
    assert tracker.rounds[1]["central_epsilon"] > 0
    assert "client-level central DP" in tracker.tags[None]["fedsilo.privacy"]


def test_central_dp_under_secure_aggregation_noises_the_unmasked_sum(tmp_path):
    central = "privacy.central_dp={noise_multiplier: 1.0e-9, clipping_norm: 1.0e3}"  # nothing clipped
    script = Scripted(SHIFT, COUNTS)
    _, tracker = run(tmp_path, THREE, *ONE_ROUND, *SECURE, central, transport=InProcess(script))
    unweighted = sum(SHIFT.values()) / 3  # each silo counts once under central DP
    assert moved_by(tracker.models[1], tracker.models[0]) == pytest.approx(unweighted, abs=1e-6)
    statement = tracker.tags[None]["fedsilo.privacy"]
    assert statement.index("secure aggregation") < statement.index("central DP")


class Halving(Wrapper):
    """A wrapper written outside fedsilo: the server step goes half way to the aggregate."""

    def step_from_sum(self, current, average, delta_sum, total_weight):
        return self.inner.step_from_sum(
            current, average, {k: v / 2 for k, v in delta_sum.items()}, total_weight
        )

    def aggregate(self, ctx, current, replies, combine=None):
        def halfway(global_state, updates):
            merged = (combine or self.strategy.aggregate)(global_state, updates)
            return {k: (v + global_state[k]) / 2 if v.is_floating_point() else v for k, v in merged.items()}

        return self.inner.aggregate(ctx, current, replies, halfway)

    def statement(self, rounds):
        return "; ".join(filter(None, ["half steps", self.inner.statement(rounds)]))


@pytest.mark.parametrize("mode", [[], SECURE], ids=["plain", "secure"])
def test_a_wrapper_from_outside_fedsilo_wraps_any_mechanism(tmp_path, mode):
    transport = InProcess(Scripted(SHIFT, COUNTS))
    _, tracker = run(tmp_path, THREE, *ONE_ROUND, *mode, transport=transport, wrap=Halving)
    expected = fedavg_shift(COUNTS) / 2
    assert moved_by(tracker.models[1], tracker.models[0]) == pytest.approx(expected, abs=1e-6)
    assert tracker.tags[None]["fedsilo.privacy"].endswith("half steps")  # privacy wraps it


def test_after_the_round_a_silo_keeps_no_secret_nor_its_encoded_update(tmp_path):
    from safetensors import safe_open

    run(tmp_path, THREE, *ONE_ROUND, *SECURE, transport=InProcess(Scripted(SHIFT, COUNTS)))
    kept = list((tmp_path / "silo-state").rglob("*.safetensors"))
    assert len(kept) == 3  # one record per silo for the round
    for path in kept:
        with safe_open(str(path), "pt") as handle:
            assert list(handle.keys()) == ["vector"] and handle.get_tensor("vector").numel() == 0
        assert path.parent.stat().st_mode & 0o077 == 0  # the silo's folder is its own
