"""Updates sent as 16-bit changes from the global model: half the bytes, the same model to within
16-bit rounding of the change."""

import pytest
import torch

from fedsilo.scenario import ScenarioError, load_scenario
from fedsilo.transfer import from_wire, to_wire
from fedsilo.validation import UpdateRefused
from tests.conftest import REPO
from tests.engine import run
from tests.test_differential_privacy import Keeping


@pytest.mark.parametrize("dtype, mantissa_bits", [("bfloat16", 8), ("float16", 11)])
def test_a_16_bit_change_rebuilds_the_weights_to_its_own_precision(dtype, mantissa_bits):
    base = {"w": torch.randn(1000) * 0.05, "steps": torch.tensor([3])}
    local = {"w": base["w"] + torch.randn(1000) * 1e-3, "steps": torch.tensor([4])}
    sent = to_wire(local, base, dtype)
    assert sent["w"].dtype == getattr(torch, dtype) and sent["steps"].dtype == torch.int64
    rebuilt = from_wire(sent, base, dtype)
    change = (local["w"] - base["w"]).abs()
    assert rebuilt["w"].dtype == torch.float32 and torch.equal(rebuilt["steps"], local["steps"])
    assert bool(((rebuilt["w"] - local["w"]).abs() <= change * 2.0**-mantissa_bits + 1e-7).all())
    # the weights themselves in 16 bits would have lost the change
    direct = local["w"].to(getattr(torch, dtype)).float()
    assert float((direct - local["w"]).abs().max()) > float((rebuilt["w"] - local["w"]).abs().max()) * 4


def test_a_change_in_another_dtype_is_refused_by_name():
    base = {"w": torch.zeros(3)}
    with pytest.raises(UpdateRefused, match="'w'.*float32.*bfloat16"):
        from_wire({"w": torch.ones(3)}, base, "bfloat16")


def test_bfloat16_transfer_halves_the_bytes_and_keeps_the_model(tmp_path):
    _, full = run(tmp_path / "full")
    silos = Keeping()
    _, half = run(tmp_path / "half", "federation.transfer_dtype=bfloat16", transport=silos)
    sent = silos.updates[(1, "clinic-a")]
    assert {t.dtype for t in sent.values() if t.is_floating_point()} == {torch.bfloat16}
    ratio = half.rounds[1]["bytes_exchanged"] / full.rounds[1]["bytes_exchanged"]
    assert 0.74 < ratio < 0.76  # the global model goes out in float32, updates come back in half
    for name, tensor in full.models[1].items():
        if tensor.is_floating_point():  # each silo's change is off by at most 2^-8 of itself (bf16)
            largest = torch.maximum(
                *(silos.updates[(1, s)][name].float().abs() for s in ("clinic-a", "clinic-b"))
            )
            assert bool(((half.models[1][name] - tensor).abs() <= largest * 2**-8 + 1e-6).all()), name
    assert list(half.matrix.index) == ["clinic-a (local)", "clinic-b (local)", "global", "alone"]
    assert half.matrix.loc["clinic-a (local)"].tolist() == full.matrix.loc["clinic-a (local)"].tolist()
    assert not list((tmp_path / "half" / "jobs").rglob("*.safetensors"))


def test_transfer_dtype_with_secure_aggregation_is_refused():
    with pytest.raises(ScenarioError, match="federation.transfer_dtype"):
        load_scenario(
            REPO / "scenarios" / "smoke.yaml",
            ["federation.transfer_dtype=float16", "privacy.secure_aggregation=true"],
        )
