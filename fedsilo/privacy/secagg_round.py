"""One secure round at the coordinator, after fit: the share, mask and unmask steps, and the sum.

Each step goes to the silos still in the round; a silo that does not answer, or answers with a
file not at the URI derived for it or not of the right form, is left out with why, and whatever
it writes late is deleted unread. Fewer than the threshold (or `min_silos`) silos after a step
refuses the round (`RoundRefused`, naming each silo left out and why).
"""

import math
from dataclasses import dataclass, field

from fedsilo.engine.aggregation import RoundContext
from fedsilo.errors import FederationError
from fedsilo.messages import MaskedUpdate, RevealedShares, SharedKeys, WeightRef
from fedsilo.privacy import secagg_recovery
from fedsilo.privacy import secagg_shares as shares
from fedsilo.privacy.secagg_shares import View
from fedsilo.privacy.secagg_steps import Mask, ShareKeys, Unmask
from fedsilo.weights import file_dtypes


class RoundRefused(Exception):
    """The round's secure sum cannot be formed; the message says why."""


@dataclass
class SecureRound:
    """The coordinator's side of one round's steps; `left_out` names each silo that fell out and
    why, `held` the files to delete once the round is done, `sent` every file that crossed (a
    bundle once up and once down to each silo that read it)."""

    ctx: RoundContext
    view: View
    left_out: dict[str, str] = field(default_factory=dict)
    held: list[WeightRef] = field(default_factory=list)
    sent: list[WeightRef] = field(default_factory=list)

    def share(self) -> dict[str, SharedKeys]:
        """Step 1: each silo's sealed shares, at the URI derived for it and of the right form."""
        view, paths = self.view, self.ctx.paths
        step = ShareKeys(view.round_index, view.peers, view.encoding.as_dict(), view.threshold, paths.root)
        outcome = self.ctx.ask(step, sorted(view.peers))
        shared = {}
        for silo, reply in outcome.replies.items():
            expected = paths.shares_uri(view.round_index, silo)
            if reply.round != view.round_index or reply.bundle.uri != expected:
                self.left_out[silo] = f"its shares are not at {expected}"
                continue
            self._hold(reply.bundle)
            if problem := _bundle_problem(reply.bundle, view.peers):
                self.left_out[silo] = problem
                continue
            shared[silo] = reply
        self._dropped(view.peers, shared, outcome, "sharing")
        self._enough(shared, "shared their keys")
        return shared

    def mask(self, shared: dict[str, SharedKeys], current: WeightRef) -> list[MaskedUpdate]:
        """Step 2: the masked vectors that arrived whole, at the URIs derived for them."""
        view, paths = self.view, self.ctx.paths
        bundles = {silo: reply.bundle for silo, reply in sorted(shared.items())}
        self.sent += list(bundles.values()) * len(bundles)  # each silo reads every bundle
        outcome = self.ctx.ask(Mask(view.round_index, view.digest, bundles, paths.root), sorted(shared))
        masked = []
        for silo, reply in outcome.replies.items():
            expected = paths.masked_uri(view.round_index, 0, silo)
            if reply.round != view.round_index or reply.vector.uri != expected:
                self.left_out[silo] = f"its masked update is not at {expected}"
                continue
            self._hold(reply.vector)
            masked.append(reply)
        problems = masked_problems(masked, current)
        self.left_out |= problems
        masked = [m for m in masked if m.silo not in problems]
        self._dropped(shared, {m.silo for m in masked}, outcome, "masking")
        for ref in bundles.values():  # every silo keeps the shares sealed for it
            self.ctx.ledger.release(ref)
        self._enough([m.silo for m in masked], "masked their updates")
        return masked

    def reveal(self, shared: dict[str, SharedKeys], masked: list[MaskedUpdate]) -> dict[str, RevealedShares]:
        """Step 3: the survivors' shares (a survivor that gives none still counts in the sum)."""
        survivors = sorted(m.silo for m in masked)
        dropped = sorted(set(shared) - set(survivors))
        step = Unmask(self.view.round_index, self.view.digest, survivors, dropped, self.ctx.paths.root)
        outcome = self.ctx.ask(step, survivors)
        revealed = {}
        for silo, reply in outcome.replies.items():
            if problem := secagg_recovery.revealed_problem(reply, survivors, dropped):
                self.ctx.log.warning("%s: the shares of %s are left out: %s", step.label, silo, problem)
            else:
                revealed[silo] = reply
        if len(revealed) < self.view.threshold:
            raise RoundRefused(
                f"round {self.view.round_index}: {len(revealed)} silos gave their shares, fewer than the "
                f"threshold {self.view.threshold} needed to unmask (privacy.secagg_threshold)"
            )
        return revealed

    def _hold(self, ref: WeightRef) -> None:
        self.held.append(self.ctx.ledger.hold(ref))
        self.sent.append(ref)

    def _dropped(self, asked, answered, outcome, stage: str) -> None:
        """Name each asked silo that did not go through `stage`; what it writes late is deleted."""
        paths, round_index = self.ctx.paths, self.view.round_index
        for silo in sorted(set(asked) - set(answered)):
            reason = self.left_out.get(silo) or outcome.left_out().get(silo, "did not answer")
            self.left_out[silo] = f"dropped out of the {stage} step: {reason}"
            late = paths.shares_uri(round_index, silo) if stage == "sharing" else None
            self.ctx.ledger.expect_late(late or paths.masked_uri(round_index, 0, silo))

    def _enough(self, answered, stage: str) -> None:
        """Refuse the round when fewer than the threshold (or min_silos) went through `stage`."""
        view = self.view
        if len(answered) < view.threshold:
            named = ", ".join(f"{silo} ({why})" for silo, why in sorted(self.left_out.items()))
            raise RoundRefused(
                f"round {view.round_index}: {len(answered)} silos {stage}, fewer than the threshold "
                f"{view.threshold} secure aggregation needs to unmask (privacy.secagg_threshold); "
                f"left out: {named or 'none'}"
            )
        try:
            self.ctx.check_quorum(sorted(answered), f"round {view.round_index} secure aggregation ({stage})")
        except FederationError as exc:
            raise RoundRefused(str(exc)) from None


def _bundle_problem(ref: WeightRef, peers: dict[str, str]) -> str | None:
    """Why a sealed bundle cannot be relayed, or None: one sealed share per peer, of fixed size."""
    expected = {peer: ("U8", (shares.SEALED_BYTES,)) for peer in peers}
    try:
        if file_dtypes(ref) == expected:
            return None
    except Exception as exc:  # not safetensors, a store error
        return f"unreadable shares: {exc}"
    return f"its shares must be {len(peers)} sealed boxes of {shares.SEALED_BYTES} bytes, one per peer"


def masked_problems(masked: list[MaskedUpdate], current: WeightRef) -> dict[str, str]:
    """Masked vectors that cannot enter a sum, by silo, with why: unreadable, or not one int32
    vector as long as the model's floating coordinates plus one. Such a silo counts as dropped."""
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
