"""Untrusted updates: each broken one is left out with its reason; the global model stays clean."""

import hashlib
import re

import pytest
import torch

from fedsilo.engine.aggregation import UpdateRules
from fedsilo.messages import Evaluation, FitReport, WeightRef
from fedsilo.strategies import FedAvg, Median
from fedsilo.validation import Layout, UpdateRefused, check_update, update_norm
from fedsilo.weights import read_state, write_state
from tests.engine import aggregate

GLOBAL = {"w": torch.zeros(3), "b": torch.zeros(2), "num_batches_tracked": torch.tensor(0)}


def honest(value: float = 1.0) -> dict:
    counter = {"num_batches_tracked": torch.tensor(4)}
    return {"w": torch.full((3,), value), "b": torch.full((2,), value)} | counter


BROKEN = {
    "nan": (honest() | {"w": torch.tensor([1.0, float("nan"), 1.0])}, 10, "NaN or infinite"),
    "inf": (honest() | {"b": torch.tensor([float("inf"), 1.0])}, 10, "NaN or infinite"),
    "broadcastable shape": (honest() | {"w": torch.ones(1, 3)}, 10, "shape (1, 3), expected (3,)"),
    "other shape": (honest() | {"w": torch.ones(4)}, 10, "shape (4,), expected (3,)"),
    "integer in a float slot": (honest() | {"w": torch.ones(3, dtype=torch.int64)}, 10, "dtype torch.int64"),
    "half precision": (honest() | {"b": torch.ones(2, dtype=torch.float16)}, 10, "dtype torch.float16"),
    "missing tensor": ({"w": torch.ones(3), "num_batches_tracked": torch.tensor(1)}, 10, "missing ['b']"),
    "extra tensor": (honest() | {"x": torch.ones(1)}, 10, "unexpected ['x']"),
    "zero examples": (honest(), 0, "positive integer, got 0"),
    "negative examples": (honest(), -5, "positive integer, got -5"),
    "more examples than it holds": (honest(), 10**15, "exceeds the 100 training examples"),
    "a float count": (honest(), 2.5, "positive integer, got 2.5"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_update_is_named(case):
    state, count, reason = BROKEN[case]
    with pytest.raises(UpdateRefused, match=re.escape(reason)):
        check_update(state, count, GLOBAL, Layout.of(GLOBAL), trained_on=100)


def test_the_norm_bound_is_optional():
    far = honest(100.0)
    check_update(far, 10, GLOBAL, Layout.of(GLOBAL), trained_on=100)
    assert update_norm(far, GLOBAL) == pytest.approx(100 * 5**0.5)
    with pytest.raises(UpdateRefused, match="max_update_norm"):
        check_update(far, 10, GLOBAL, Layout.of(GLOBAL), trained_on=100, max_norm=10.0)


def fit_report(silo: str, ref, n) -> FitReport:
    return FitReport(silo, 1, ref, n, 0.1, Evaluation(silo, 1.0, 1.0, 0.0, [[1]]), 1.0)


@pytest.mark.parametrize("strategy", [FedAvg(), Median()], ids=["fedavg", "median"])
def test_every_broken_update_is_left_out_and_the_result_is_the_honest_average(tmp_path, strategy):
    current = write_state(GLOBAL, str(tmp_path / "global.safetensors"))
    reports = [fit_report("honest-a", write_state(honest(1.0), str(tmp_path / "a.safetensors")), 10)]
    reports.append(fit_report("honest-b", write_state(honest(3.0), str(tmp_path / "b.safetensors")), 10))
    for index, case in enumerate(sorted(BROKEN)):
        state, count, _ = BROKEN[case]
        reports.append(fit_report(case, write_state(state, str(tmp_path / f"{index}.safetensors")), count))
    junk = b"not a safetensors file"  # its checksum is right: the bytes are what the silo sent
    (tmp_path / "junk.safetensors").write_bytes(junk)
    junk_ref = WeightRef(
        (tmp_path / "junk.safetensors").as_uri(), hashlib.sha256(junk).hexdigest(), len(junk)
    )
    reports.append(fit_report("junk", junk_ref, 10))
    trained_on = {r.silo: 100 for r in reports}
    new, rejected = aggregate(strategy, current, reports, tmp_path, UpdateRules(trained_on))
    assert set(rejected) == set(BROKEN) | {"junk"}
    assert "unreadable update" in rejected["junk"]
    for case, (_, _, reason) in BROKEN.items():
        assert reason in rejected[case]
    result = read_state(new)
    assert torch.equal(result["w"], torch.full((3,), 2.0)) and torch.equal(result["b"], torch.full((2,), 2.0))
    assert all(bool(torch.isfinite(t).all()) for t in result.values() if t.is_floating_point())


def test_an_update_of_only_broken_silos_writes_no_model(tmp_path):
    current = write_state(GLOBAL, str(tmp_path / "global.safetensors"))
    bad = write_state(BROKEN["nan"][0], str(tmp_path / "bad.safetensors"))
    new, rejected = aggregate(FedAvg(), current, [fit_report("x", bad, 5)], tmp_path, UpdateRules({}))
    assert new is None and list(rejected) == ["x"] and not (tmp_path / "new.pt").exists()
