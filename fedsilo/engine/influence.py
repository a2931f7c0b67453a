"""How far one silo may move the global model: bounded by default, by numbers it does not control.

- Its update is clipped to `NORM_FACTOR` x the round's median update norm (L2 distance from the
  global model, in float64) when at least `MIN_SILOS` updates arrive; `federation.max_update_norm`
  refuses updates beyond an absolute bound on top of that.
- Its FedAvg weight is its example count, capped at `WEIGHT_FACTOR` x the lower median of the
  counts all silos reported at prepare (the lower median of two is the smaller one); in the union
  metrics its test split weighs at most `TEST_FACTOR` x the lower median test count.
- A round with fewer than `MIN_SILOS` updates (one silo absent) keeps the last bound computed.

So with K >= 3 silos of which a majority is honest, one silo moves a FedAvg round's model by at
most `NORM_FACTOR` times the median honest update's norm, whatever it sends or claims. The
aggregated model is checked (finite) before it is evaluated, logged or kept.
"""

import statistics

import numpy as np
import torch

from fedsilo.metrics import union_metrics
from fedsilo.privacy.central import clip_to_norm
from fedsilo.weights import State, read_state, write_state

NORM_FACTOR = 3.0
WEIGHT_FACTOR = 4
TEST_FACTOR = 1  # one silo's test split weighs at most the lower median split in the union metrics
MIN_SILOS = 3


def norm_bound(norms: list[float]) -> float | None:
    """The round's clipping bound on one update's norm, or None with fewer than MIN_SILOS updates."""
    if len(norms) < MIN_SILOS:
        return None
    return NORM_FACTOR * statistics.median(norms)


def weight_cap(claims: list[int], factor: int = WEIGHT_FACTOR) -> int | None:
    """The most weight one silo may carry, from every silo's count at prepare (training counts
    for FedAvg, test counts for the union metrics)."""
    if len(claims) < 2:
        return None
    return max(1, factor * statistics.median_low(claims))


def bounded_union(evaluations, cap: int | None) -> dict[str, float]:
    """accuracy, f1_macro and loss over the union of the silos' test splits, each split weighing
    at most `cap` examples (a larger one's counts scaled down): no silo decides the union."""
    confusions = []
    for evaluation in evaluations:
        matrix = np.asarray(evaluation.confusion, dtype=np.float64)
        total = matrix.sum()
        confusions.append(matrix * (cap / total) if cap is not None and total > cap else matrix)
    return union_metrics(confusions, [e.loss for e in evaluations])


def bound_state(key: str, bound: float | None) -> State:
    """A norm bound as a tensor of the strategy's state, so a resumed job keeps it (none: empty)."""
    return {key: torch.tensor(bound, dtype=torch.float64)} if bound else {}


def bound_from(key: str, state: State) -> tuple[float | None, State]:
    """The norm bound kept in `state` (or None), and the rest of the state."""
    rest = dict(state)
    bound = rest.pop(key, None)
    return (float(bound) if bound is not None else None), rest


def scale(norm: float, bound: float | None) -> float:
    """The factor clipping to `bound` multiplies a change of norm `norm` by (1: not clipped)."""
    return bound / norm if bound is not None and norm > bound else 1.0


def clipped(state: State, current: State, norm: float, bound: float | None) -> State:
    """The update moved back toward `current` so its change has norm at most `bound`."""
    if bound is None or norm <= bound:
        return state
    return clip_to_norm(state, current, bound)[0]


def model_problem(state: State) -> str | None:
    """Why an aggregated model or strategy state cannot be kept (a non-finite value), or None."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            return f"tensor {name!r} of the aggregate is not finite"
    return None


def kept_sound(
    aggregation, before: State, new, current, out_uri: str, ledger, unsound: str = ""
) -> tuple[object, str | None]:
    """The round's new global model, or the previous one (copied to `out_uri`) with why when the
    aggregation found no sound sum (`unsound`), or the aggregate or the strategy's state after it
    holds a non-finite value; the strategy's state then goes back to `before`."""
    problem = unsound or None
    if new is not None and problem is None:
        problem = model_problem(read_state(new)) or model_problem(aggregation.state_dict())
    if problem is None:
        return new, None
    aggregation.load_state_dict(before)
    if new is not None:
        ledger.release(new)
    return ledger.hold(write_state(read_state(current), out_uri)), problem


def aggregate_round(job, round_index: int, current, outcome):
    """The round's aggregate, kept only when sound (else the previous global model); refused
    updates leave `outcome`, clipped ones are named. Returns the new model and what was sent."""
    before = {name: t.clone() for name, t in job.aggregation.state_dict().items()}
    context = job.context(round_index)
    context.arrived = list(outcome.arrived)
    fits = list(outcome.replies.values())
    new, refused, sent = job.aggregation.aggregate(context, current, fits)
    if new is not None:
        job.ledger.hold(new)
    for silo, reason in refused.items():
        job.log.warning("round %d: update of %s refused: %s", round_index, silo, reason)
        job.ledger.release(outcome.replies[silo].update if silo in outcome.replies else None)
        outcome.refuse(silo, reason)
    if outcome.replies:
        out_uri = job.paths.global_uri(round_index)
        args = (job.aggregation, before, new, current, out_uri, job.ledger, context.unsound)
        new, problem = kept_sound(*args)
        if problem:
            job.log.warning("round %d: aggregate refused, previous model kept: %s", round_index, problem)
            job.tracker.set_tags({f"fedsilo.refused.round_{round_index}.aggregate": problem})
    if context.clipped:
        clipped = ", ".join(
            silo if norm is None else f"{silo} (norm {norm:.3g})"
            for silo, norm in sorted(context.clipped.items())
        )
        job.tracker.set_tags({f"fedsilo.clipped.round_{round_index}": clipped})
    return new, sent


def describe() -> str:
    """The rule in one line, for the job's tags."""
    return (
        f"each update clipped to {NORM_FACTOR:g} x the round's median update norm (>= {MIN_SILOS} "
        f"updates); each FedAvg weight capped at {WEIGHT_FACTOR} x the lower median training count"
    )
