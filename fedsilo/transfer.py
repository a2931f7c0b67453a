"""Updates on the wire in 16 bits: the change from the global model, not the weights.

A bf16 or fp16 copy of the weights themselves would lose the update: weights near 0.05 in bf16
are off by about 2e-4, more than a round of fine-tuning moves them. The change from the global
model is small, so 16 bits keep its own leading digits; the coordinator adds it back to the
float32 global model it sent. `federation.transfer_dtype: float32` sends the weights unchanged.
"""

import torch

from fedsilo.messages import WeightRef
from fedsilo.validation import UpdateRefused
from fedsilo.weights import State, read_state, write_state

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def to_wire(local: State, base: State, dtype: str) -> State:
    """What a silo sends: its weights (float32), or their change from `base` in `dtype`."""
    if dtype not in DTYPES:
        return local
    return {
        name: (t.float() - base[name].float()).to(DTYPES[dtype]) if t.is_floating_point() else t
        for name, t in local.items()
    }


def from_wire(sent: State, base: State, dtype: str) -> State:
    """The silo's weights from what it sent, in the global model's dtypes; a floating tensor that
    is not in `dtype` is refused by name (names and shapes are checked with the update)."""
    if dtype not in DTYPES:
        return sent
    weights = {}
    for name, tensor in sent.items():
        held = base.get(name)
        if held is None or not held.is_floating_point() or tensor.shape != held.shape:
            weights[name] = tensor  # check_update names what is wrong with it
            continue
        if tensor.dtype != DTYPES[dtype]:
            raise UpdateRefused(
                f"tensor {name!r} has dtype {tensor.dtype}, expected {dtype} (federation.transfer_dtype)"
            )
        weights[name] = (held.float() + tensor.float()).to(held.dtype)
    return weights


def materialize(sent: WeightRef, base: WeightRef, dtype: str, out_uri: str) -> WeightRef:
    """A silo's full weights from what it sent (a 16-bit change from `base`), written to `out_uri`."""
    return write_state(from_wire(read_state(sent), read_state(base), dtype), out_uri)
