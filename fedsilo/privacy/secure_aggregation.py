"""Secure aggregation as a wrapper: the coordinator sees only the sum of masked updates.

Three parts, one module (the maths is in fedsilo.privacy.secagg):
- the silo's upload hook (`keep_for_masking`): after training, the silo checks, clips and encodes
  its update, keeps it with a fresh X25519 key pair on its own disk, and answers the public key;
- the extra step `Mask` and its silo handler: given every peer's public key, the silo adds its
  pairwise masks to the kept update and writes the masked vector;
- the coordinator's `SecureAggregation` wrapper: it adds the encoding to every silo's fit
  settings, asks the mask step (again, without any silo that drops out of it: masks cancel only
  in the sum over every silo that got the key list), unmasks and checks the sum, and hands it to
  the wrapped aggregation's step (central DP noises it there).
Scenario fields: `privacy.secure_aggregation`, `privacy.clipping_range`.
"""

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from fedsilo.engine.aggregation import Aggregation, RoundContext, Wrapper
from fedsilo.handler import handles
from fedsilo.messages import FitReport, MaskedUpdate, WeightRef
from fedsilo.modeling import shared_state
from fedsilo.paths import JobPaths
from fedsilo.privacy import pending, secagg
from fedsilo.privacy.central import clip_to_norm
from fedsilo.scenario import Scenario
from fedsilo.silo import Sent, plain_upload
from fedsilo.steps import Step
from fedsilo.weights import State, file_dtypes, read_state, write_state


@dataclass(frozen=True)
class Mask(Step):
    """Add pairwise masks with `peers` (silo -> public key, this silo included) to the update kept
    at fit, and write the masked vector under `exchange`."""

    round_index: int
    attempt: int
    peers: dict[str, str]
    exchange: str
    kind: ClassVar[str] = "mask"
    reply: ClassVar[type] = MaskedUpdate

    @property
    def label(self) -> str:
        return f"mask-round-{self.round_index}-attempt-{self.attempt}"

    def task_name(self, silo: str) -> str:
        return f"mask-{silo}-round-{self.round_index}-attempt-{self.attempt}"


# -- the silo's side -------------------------------------------------------------------------------


def keep_for_masking(silo, global_state: State, update_uri: str, config: dict) -> Sent:
    """Check, clip and encode the silo's update and keep it, with a fresh key pair, on the silo's
    own disk; answer the public key and how many coordinates were clipped."""
    privacy, local = silo.scenario.privacy, shared_state(silo.model)
    if not all(bool(t.isfinite().all()) for t in local.values() if t.is_floating_point()):
        raise secagg.SecAggError(f"silo {silo.silo}: local training produced NaN or infinite weights")
    norm_bounds = [privacy.central_dp.clipping_norm] if privacy.central_dp else []
    max_norm = silo.scenario.federation.max_update_norm
    norm_bounds += [max_norm] if max_norm else []
    if norm_bounds:
        local, _ = clip_to_norm(local, global_state, min(norm_bounds))
    weight = 1 if privacy.central_dp else silo.num_examples
    encoding = secagg.Encoding(privacy.clipping_range, int(config["secagg_weight_bound"]))
    vector, clipped = secagg.encode(local, global_state, weight, encoding)
    private = secagg.new_private_key()
    pending.keep(silo.silo, update_uri, vector, private)
    return Sent(None, secagg.public_key(private), clipped)


def upload_for(scenario: Scenario):
    """The silo's upload hook: kept for masking under secure aggregation, else a plain file."""
    return keep_for_masking if scenario.privacy.secure_aggregation else plain_upload


@handles(Mask)
def mask(scenario: Scenario, silo: str, step: Mask, progress=None) -> MaskedUpdate:
    paths = JobPaths(step.exchange)
    vector, private = pending.load(silo, paths.update_uri(step.round_index, silo))
    if step.peers.get(silo) != secagg.public_key(private):
        raise secagg.SecAggError(f"silo {silo}: the key list does not hold this silo's key for the round")
    if len(step.peers) < 2:
        raise secagg.SecAggError(f"silo {silo}: will not send a masked update with no other silo")
    context = f"round {step.round_index} attempt {step.attempt}".encode()
    masked = secagg.mask(vector, secagg.pair_masks(private, silo, step.peers, context, len(vector)))
    out_uri = paths.masked_uri(step.round_index, step.attempt, silo)
    ref = write_state({"masked": torch.from_numpy(masked.view(np.int32))}, out_uri)
    return MaskedUpdate(silo, step.round_index, step.attempt, ref)


# -- the coordinator's side ------------------------------------------------------------------------


class SecureAggregation(Wrapper):
    """Masked uploads summed, never seen one by one."""

    def __init__(self, inner: Aggregation, clipping_range: float):
        super().__init__(inner)
        self.encoding = secagg.Encoding(clipping_range, inner.weight_of(list(inner.rules.trained_on)))

    def configure_fit(self, round_index: int) -> dict[str, float]:
        return self.inner.configure_fit(round_index) | {
            "secagg_weight_bound": float(self.encoding.weight_bound)
        }

    def fit_reply_problem(self, reply: FitReport, expects_update: bool = True) -> str | None:
        if reply.update is not None:
            return "sent a plain update under secure aggregation"
        return secagg.public_key_problem(reply.public_key) or self.inner.fit_reply_problem(reply, False)

    def aggregate(self, ctx: RoundContext, current: WeightRef, replies: list[FitReport], combine=None):
        peers = {r.silo: r.public_key for r in replies}
        masked, refused, received = self._masked(ctx, current, peers)
        new, sum_refused = ctx.phase(
            f"aggregate-round-{ctx.round_index}", lambda: self._unmasked(ctx, current, masked)
        )
        for item in masked:
            ctx.ledger.release(item.vector)
        summed = {m.silo for m in masked}
        dropped = "dropped out of the masking step"
        left_out = {r.silo: refused.get(r.silo, dropped) for r in replies if r.silo not in summed}
        return new, left_out | sum_refused, received

    def _masked(self, ctx: RoundContext, current: WeightRef, peers: dict[str, str]):
        """The mask step, asked again without the silos that drop out of it, until every silo
        asked answers. Returns the last attempt's vectors, the silos refused, every vector received."""
        attempt, received, refused = 0, [], {}
        while True:
            label = f"round {ctx.round_index} masking, attempt {attempt}"
            ctx.check_quorum(list(peers), label)
            step = Mask(ctx.round_index, attempt, peers, ctx.paths.root)
            masked = _derived(ctx, step, ctx.ask(step, list(peers)).replies)
            received += [m.vector for m in masked]
            problems = masked_problems(masked, current)
            refused |= problems
            for item in masked:
                if item.silo in problems:
                    ctx.ledger.release(item.vector)
            masked = [m for m in masked if m.silo not in problems]
            dropped = sorted(set(peers) - {m.silo for m in masked})
            for silo in dropped:  # it may still write its vector late: delete it at the end, unread
                ctx.ledger.expect_late(ctx.paths.masked_uri(ctx.round_index, attempt, silo))
            if not dropped:
                return masked, refused, received
            ctx.log.warning("%s: no masked update from %s; the others mask again without it", label, dropped)
            for item in masked:
                ctx.ledger.release(item.vector)
            peers = {silo: key for silo, key in peers.items() if silo not in dropped}
            attempt += 1

    def _unmasked(self, ctx: RoundContext, current: WeightRef, masked: list[MaskedUpdate]):
        """The next global model from one attempt's masked vectors: their sum, unmasked, decoded
        and checked (the coordinator cannot check one silo's update, only the sum of them all).
        A sum that fails leaves the whole round out: every silo in it is named with the reason."""
        silos = sorted(m.silo for m in masked)
        global_state = read_state(current)
        try:
            delta_sum, total = self._checked_sum(masked, global_state, silos)
        except Exception as exc:  # unreadable vectors, a sum no honest silos could produce
            return None, dict.fromkeys(silos, f"the secure sum of {', '.join(silos)} was refused: {exc}")
        state = self.inner.step_from_sum(global_state, global_state, delta_sum, total)
        return write_state(state, ctx.paths.global_uri(ctx.round_index)), {}

    def _checked_sum(self, masked: list[MaskedUpdate], global_state: State, silos: list[str]):
        vectors = [read_state(m.vector)["masked"].numpy().view("uint32") for m in masked]
        if len({v.shape for v in vectors}) != 1:
            raise secagg.SecAggError("the masked vectors differ in length")
        max_weight = self.inner.weight_of(silos)
        delta_sum, total = secagg.decode_sum(
            secagg.unmask_sum(vectors), global_state, self.encoding, max_weight
        )
        if self.rules.max_norm is not None:
            mean_norm = math.sqrt(sum(float(v.pow(2).sum()) for v in delta_sum.values())) / total
            if mean_norm > self.rules.max_norm:
                raise secagg.SecAggError(
                    f"the mean update's norm {mean_norm:.4g} exceeds federation.max_update_norm"
                )
        return delta_sum, total

    def statement(self, rounds: int) -> str:
        own = "secure aggregation (the coordinator saw only sums of masked updates)"
        return "; ".join(filter(None, [own, self.inner.statement(rounds)]))


def _derived(ctx: RoundContext, step: Mask, replies: dict[str, MaskedUpdate]) -> list[MaskedUpdate]:
    """The masked vectors of this attempt at the URIs derived for them, held in the ledger."""
    kept = []
    for silo, item in replies.items():
        expected = ctx.paths.masked_uri(step.round_index, step.attempt, silo)
        if (item.round, item.attempt) != (step.round_index, step.attempt) or item.vector.uri != expected:
            ctx.log.warning("%s: the masked update of %s is not at %s; left out", step.label, silo, expected)
            ctx.ledger.expect_late(expected)
            continue
        kept.append(item)
        ctx.ledger.hold(item.vector)
    return kept


def masked_problems(masked: list[MaskedUpdate], current: WeightRef) -> dict[str, str]:
    """Masked vectors that cannot enter a sum, by silo, with why: unreadable, or not one int32
    vector as long as the model's floating coordinates plus one. The coordinator checks their
    shape before summing; such a silo is treated as dropped."""
    floats = ("F16", "BF16", "F32", "F64")
    expected = 1 + sum(math.prod(shape) for kind, shape in file_dtypes(current).values() if kind in floats)
    problems = {}
    for item in masked:
        try:
            header = file_dtypes(item.vector)
        except Exception as exc:  # not safetensors, a store error
            problems[item.silo] = f"unreadable masked update: {exc}"
            continue
        if header != {"masked": ("I32", (expected,))}:
            problems[item.silo] = f"a masked update must be one int32 vector of {expected} values"
    return problems


def wrap(scenario: Scenario, inner: Aggregation) -> Aggregation:
    """`inner` under secure aggregation when the scenario turns it on."""
    if not scenario.privacy.secure_aggregation:
        return inner
    return SecureAggregation(inner, scenario.privacy.clipping_range)
