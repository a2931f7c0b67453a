"""Secure aggregation as a wrapper: the coordinator sees only the sum of the silos' updates, and a
silo that drops out is recovered without anyone masking twice (double masking, Bonawitz et al.
2017, "Practical Secure Aggregation").

A round under it, after fit (each silo kept its clipped, encoded update and answered two public
keys; fedsilo.privacy.secagg_silo is the silo side, secagg_steps the steps):
1. ShareKeys to the silos that trained: each seals shares of a fresh self-mask seed and of its
   masking key for every peer (threshold t); the coordinator relays the sealed bundles unread.
2. Mask to the silos that shared: each adds its self mask and its pairwise masks, once.
3. Unmask to the silos whose vectors arrived (survivors): shares of every survivor's seed and of
   every dropped silo's masking key. With t of them the coordinator removes the self masks and
   the dropped silos' pairwise masks, checks the sum with integers only, and hands it to the
   wrapped aggregation's step (central DP noises it there).
Fewer than t silos at any step (or fewer than min_silos) refuses the round, naming why.
Influence: each silo clips its change to the round's L2 bound before encoding (a fixed bound, or
with none set 3x the median of the norms the silos reported at fit), and the unmasked sum is
refused unless its weight is the survivors' exactly, every coordinate is in range and the mean's
norm is within the bound: a silo that skips clipping can spoil a round or choose its direction
within the bound (no one sees its vector), never move the mean change past it.
Scenario fields: `privacy.secure_aggregation`, `privacy.clipping_range`, `privacy.secagg_threshold`,
`privacy.secagg_norm_bound`.
"""

import math
from dataclasses import replace

import torch

from fedsilo.engine import influence
from fedsilo.engine.aggregation import Aggregation, RoundContext
from fedsilo.engine.wrapping import Wrapper
from fedsilo.messages import FitReport, WeightRef
from fedsilo.personal import personal_names
from fedsilo.privacy import secagg, secagg_recovery
from fedsilo.privacy import secagg_shares as shares
from fedsilo.privacy.secagg_round import RoundRefused, SecureRound, masked_problems
from fedsilo.privacy.secagg_shares import View
from fedsilo.privacy.secagg_silo import norm_bounds, upload_for
from fedsilo.privacy.secagg_steps import Mask, ShareKeys, Unmask
from fedsilo.scenario import Scenario
from fedsilo.weights import read_state, write_state


class SecureAggregation(Wrapper):
    """Masked uploads summed, never seen one by one, dropouts recovered from shared secrets."""

    def __init__(self, inner: Aggregation, scenario: Scenario):
        super().__init__(inner)
        privacy = scenario.privacy
        self.unit_weights = privacy.central_dp is not None  # central DP counts each silo once
        self.threshold = privacy.secagg_threshold
        weight_cap = 0 if self.unit_weights else (self.rules.weight_cap or 0)
        bound = min(norm_bounds(scenario), default=0.0)
        weight_bound = inner.weight_of(list(self.rules.trained_on))
        self.encoding = secagg.Encoding(privacy.clipping_range, weight_bound, bound, weight_cap)
        self.last_bound: float | None = None  # the round's norm bound when no fixed one is set

    def configure_fit(self, round_index: int) -> dict[str, float]:
        return self.inner.configure_fit(round_index) | {
            "secagg_weight_bound": float(self.encoding.weight_bound),
            "secagg_norm_bound": float(self.encoding.norm_bound),
            "secagg_weight_cap": float(self.encoding.weight_cap),
        }

    def fit_reply_problem(self, reply: FitReport, expects_update: bool = True) -> str | None:
        if reply.update is not None:
            return "sent a plain update under secure aggregation"
        trained_on = self.rules.trained_on.get(reply.silo)
        if trained_on is None:
            return "it did not describe its data at prepare, so it cannot take part in masking"
        if isinstance(reply.num_examples, bool) or not 0 < reply.num_examples <= trained_on:
            return f"reported {reply.num_examples!r} training examples; it reported {trained_on} at prepare"
        norm = reply.update_norm
        if isinstance(norm, bool) or not isinstance(norm, int | float) or not 0 <= norm < math.inf:
            return f"reported an update norm of {norm!r}"
        return shares.bundle_problem(reply.public_key) or self.inner.fit_reply_problem(reply, False)

    def weight(self, fit: FitReport) -> int:
        """The weight a silo's vector must carry: 1 under central DP, else its capped count."""
        return 1 if self.unit_weights else self.rules.weight(fit.silo, fit.num_examples)

    def aggregate(self, ctx: RoundContext, current: WeightRef, replies: list[FitReport], combine=None):
        left_out: dict[str, str] = {}
        fits = _distinct_keys(replies, left_out, ctx.arrived)
        peers = {fit.silo: fit.public_key for fit in fits}
        threshold = shares.threshold_for(self.threshold, len(peers))
        encoding = self.round_encoding(ctx, fits)
        steps = SecureRound(ctx, View(ctx.round_index, ctx.paths.root, peers, encoding, threshold), left_out)
        try:
            if threshold > len(peers):
                raise RoundRefused(f"{len(peers)} silos trained; privacy.secagg_threshold is {threshold}")
            shared = steps.share()
            masked = steps.mask(shared, current)
            revealed = steps.reveal(shared, masked)
            new, refused = ctx.phase(
                f"aggregate-round-{ctx.round_index}",
                lambda: self._unmasked(ctx, current, steps.view, fits, shared, masked, revealed),
            )
        except RoundRefused as exc:
            ctx.log.warning("round %d: secure aggregation refused the round: %s", ctx.round_index, exc)
            new, refused = None, dict.fromkeys([f.silo for f in fits if f.silo not in left_out], str(exc))
        finally:
            for ref in steps.held:
                ctx.ledger.release(ref)
        return new, left_out | refused, steps.sent

    def round_encoding(self, ctx: RoundContext, fits: list[FitReport]) -> secagg.Encoding:
        """The round's encoding: with no fixed norm bound, each silo's change is clipped to
        NORM_FACTOR x the median of the norms the silos reported (three or more; else the last
        round's bound), so one silo's report cannot set it. Silos beyond it are named as clipped."""
        if self.encoding.norm_bound:
            return self.encoding
        norms = {fit.silo: float(fit.update_norm) for fit in fits}
        self.last_bound = influence.norm_bound(list(norms.values())) or self.last_bound
        if not self.last_bound:
            return self.encoding
        # named as clipped, without its norm: no silo's norm goes into MLflow
        ctx.clipped.update({silo: None for silo, norm in norms.items() if norm > self.last_bound})
        return replace(self.encoding, norm_bound=self.last_bound)

    def _unmasked(self, ctx, current, view: View, fits, shared, masked, revealed):
        """The next global model from the survivors' vectors, unmasked and checked. A sum that
        fails (one silo can make it fail; no one can tell which) keeps the previous global model
        for the round, with the reason in `ctx.unsound`, rather than failing the job."""
        survivors = sorted(m.silo for m in masked)
        global_state = read_state(current)
        weight = sum(self.weight(fit) for fit in fits if fit.silo in survivors)
        try:
            seeds, keys = secagg_recovery.rebuild(view, shared, revealed, survivors)
            vectors = [read_state(m.vector)["masked"].numpy().view("uint32") for m in masked]
            values = secagg.signed(secagg_recovery.unmasked(vectors, view, seeds, keys, survivors))
            secagg.check_sum(values, view.encoding, weight)
            delta_sum = secagg.decode_sum(values, global_state, view.encoding)
            secagg.check_norm(delta_sum, view.encoding, weight, len(survivors))
            for name in personal_names(self.rules.personal, delta_sum):  # they stay at the silos
                delta_sum[name] = torch.zeros_like(delta_sum[name])
        except Exception as exc:  # unreadable vectors, shares that rebuild nothing, a bad sum
            # no one can tell whose vector broke the sum: the round keeps the previous model
            ctx.unsound = f"the secure sum of {', '.join(survivors)} was refused: {exc}"
            return None, {}
        state = self.inner.step_from_sum(global_state, global_state, delta_sum, weight)
        return write_state(state, ctx.paths.global_uri(ctx.round_index)), {}

    def state_dict(self):  # the inner state, and the round's norm bound (kept across a resume)
        return self.inner.state_dict() | influence.bound_state("fedsilo/secagg_norm_bound", self.last_bound)

    def load_state_dict(self, state) -> None:
        self.last_bound, state = influence.bound_from("fedsilo/secagg_norm_bound", state)
        self.inner.load_state_dict(state)

    def statement(self, rounds: int) -> str:
        own = "secure aggregation (double masking: the coordinator saw only sums of masked updates)"
        return "; ".join(filter(None, [own, self.inner.statement(rounds)]))


def _distinct_keys(replies: list[FitReport], left_out: dict[str, str], arrived: list[str]) -> list[FitReport]:
    """The fit replies whose keys no silo sent before (a copied key masks nothing), taken in the
    order they `arrived`: a silo that copies a key it read on the wire is the later one and is
    left out, not the silo it copied."""
    owner: dict[str, str] = {}
    order = {silo: index for index, silo in enumerate(arrived)}
    for fit in sorted(replies, key=lambda fit: order.get(fit.silo, len(order))):
        keys = shares.keys_of(fit.public_key)
        if any(owner.get(key, fit.silo) != fit.silo for key in keys):
            left_out[fit.silo] = "it sent a public key another silo sent first"
            continue
        owner.update(dict.fromkeys(keys, fit.silo))
    return [fit for fit in replies if fit.silo not in left_out]


def wrap(scenario: Scenario, inner: Aggregation) -> Aggregation:
    """`inner` under secure aggregation when the scenario turns it on."""
    if not scenario.privacy.secure_aggregation:
        return inner
    return SecureAggregation(inner, scenario)


__all__ = ["Mask", "SecureAggregation", "ShareKeys", "Unmask", "masked_problems", "upload_for", "wrap"]
