"""Checks every silo update must pass before it is aggregated: a silo's update is untrusted input.

An update must have the global model's layout (the same tensor names, shapes and dtypes), hold only
finite values, claim a positive integer example count no larger than the training count the silo
reported when it described its data, keep the global model's integer constants (a counter may
only grow), and, when `federation.max_update_norm` is set, move the model by at most that L2
norm (computed in float64: a norm that overflows is refused). An update that fails is left out of
the round with the reason, exactly like a silo that did not answer; it never reaches the strategy.
"""

import math
from dataclasses import dataclass

import torch

from fedsilo.errors import UpdateRefused
from fedsilo.weights import State


@dataclass(frozen=True)
class Layout:
    """Names, shapes and dtypes of the global model's tensors."""

    tensors: dict[str, tuple[tuple[int, ...], torch.dtype]]

    @classmethod
    def of(cls, state: State) -> "Layout":
        return cls({name: (tuple(t.shape), t.dtype) for name, t in state.items()})


def _check_layout(state: State, layout: Layout) -> None:
    missing = sorted(set(layout.tensors) - set(state))
    extra = sorted(set(state) - set(layout.tensors))
    if missing or extra:
        parts = [f"missing {missing[:3]}" if missing else "", f"unexpected {extra[:3]}" if extra else ""]
        raise UpdateRefused(f"tensors differ from the global model's: {'; '.join(p for p in parts if p)}")
    for name, (shape, dtype) in layout.tensors.items():
        tensor = state[name]
        if tuple(tensor.shape) != shape:
            raise UpdateRefused(f"tensor {name!r} has shape {tuple(tensor.shape)}, expected {shape}")
        if tensor.dtype != dtype:
            raise UpdateRefused(f"tensor {name!r} has dtype {tensor.dtype}, expected {dtype}")


def _check_finite(state: State) -> None:
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UpdateRefused(f"tensor {name!r} holds NaN or infinite values")


def _check_count(num_examples: object, trained_on: int | None) -> None:
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples <= 0:
        raise UpdateRefused(f"num_examples must be a positive integer, got {num_examples!r}")
    if trained_on is not None and num_examples > trained_on:
        raise UpdateRefused(
            f"num_examples {num_examples} exceeds the {trained_on} training examples the silo reported"
        )


COUNTER = "num_batches_tracked"  # the one integer buffer local training changes
MAX_COUNTER_STEP = 10**7


def _check_integers(state: State, current: State) -> None:
    """Integer tensors are constants (BERT's position_ids) or counters (BatchNorm's batches seen):
    a constant must equal the global model's, a counter may only grow, and by a plausible step."""
    for name, tensor in state.items():
        if tensor.is_floating_point():
            continue
        base = current[name]
        if name.endswith(COUNTER):
            step = tensor.long() - base.long()
            if bool((step < 0).any()) or bool((step > MAX_COUNTER_STEP).any()):
                raise UpdateRefused(f"counter {name!r} moved by an impossible step")
        elif not torch.equal(tensor, base):
            raise UpdateRefused(
                f"integer tensor {name!r} differs from the global model's (it is not trained)"
            )


def update_norm(state: State, current: State) -> float:
    """L2 norm of the update's change to the floating tensors of the current global model."""
    total = 0.0
    for name, tensor in state.items():
        if tensor.is_floating_point():
            total += float((tensor.double() - current[name].double()).pow(2).sum())
    return math.sqrt(total)


def check_update(
    state: State,
    num_examples: object,
    current: State,
    layout: Layout,
    trained_on: int | None = None,
    max_norm: float | None = None,
) -> float:
    """Raise UpdateRefused naming the first problem of a silo's update; when it is sound, return
    its L2 distance from the global model (float64)."""
    _check_count(num_examples, trained_on)
    _check_layout(state, layout)
    _check_finite(state)
    _check_integers(state, current)
    norm = update_norm(state, current)
    if not math.isfinite(norm):
        raise UpdateRefused("the update's distance from the global model overflows float64")
    if max_norm is not None and norm > max_norm:
        raise UpdateRefused(f"update norm {norm:.4g} exceeds federation.max_update_norm {max_norm:.4g}")
    return norm
