"""The coordinator's side of signing: it signs each step request, and accepts a reply only when the
silo the request was addressed to signed it, for that request.

A reply is refused and named when it is unsigned, signed by another key (a silo speaking for
another), answers another request (a replay), or its record does not match what was signed.
Every request and its outcome go to the coordinator's audit trail.
"""

from collections import Counter
from dataclasses import dataclass
from typing import Any

from fedsilo.errors import SignatureError, TrustError
from fedsilo.messages import load_reply
from fedsilo.scenario import Scenario
from fedsilo.steps import Step
from fedsilo.trust import envelope
from fedsilo.trust.audit import AuditTrail
from fedsilo.trust.claims import OUTCOMES, request_claims, weight_digests
from fedsilo.trust.identity import COORDINATOR, Identity
from fedsilo.trust.roster import Roster


@dataclass(frozen=True)
class Sent:
    """One signed request, as sent to one silo."""

    silo: str
    step: Step
    request: str  # its id
    token: str


@dataclass(frozen=True)
class Verdict:
    """What the coordinator makes of one reply: `outcome` served (with `record`), declined,
    failed, or refused (the reply itself was refused), with the reason."""

    outcome: str
    record: Any = None
    reason: str = ""


class Signer:
    """Signs a job's requests with the coordinator's key and checks replies against the roster."""

    def __init__(self, identity: Identity, roster: Roster, job: str, audit: AuditTrail):
        if identity.name != COORDINATOR:
            raise TrustError(f"the coordinator signs as {COORDINATOR!r}, not {identity.name!r}")
        self.identity, self.roster, self.job, self.audit = identity, roster, job, audit
        self.attempts: Counter[tuple[str, str]] = Counter()

    def request(self, scenario: Scenario, step: Step, silo: str, lifetime: float) -> Sent:
        """A signed request of `step` for `silo`, valid for `lifetime` seconds."""
        attempt = self.attempts[(step.label, silo)]
        self.attempts[(step.label, silo)] += 1
        claims = request_claims(self.job, silo, scenario, step, attempt, lifetime)
        return Sent(silo, step, claims["jti"], envelope.sign(self.identity, claims))

    def problem(self, sent: Sent, reply: str) -> str | None:
        """Why `reply` is not an answer to `sent` from its silo, or None (nothing is recorded)."""
        try:
            self._claims(sent, reply)
        except (SignatureError, TrustError) as exc:
            return str(exc)
        return None

    def accept(self, sent: Sent, reply: str | None) -> Verdict:
        """The verdict on `reply` (None: no answer came), recorded in the audit trail."""
        if reply is None:
            return self._record(sent, "", Verdict("absent", reason="did not answer"))
        try:
            verdict = self._verdict(sent, self._claims(sent, reply))
        except (SignatureError, TrustError) as exc:
            verdict = Verdict("refused", reason=f"reply refused: {exc}")
        return self._record(sent, reply, verdict)

    def refuse_forged(self, sent: Sent, reply: str, why: str) -> None:
        """Record a reply that claimed to answer `sent` and was refused (a forgery, a replay)."""
        self._record(sent, reply[:65536], Verdict("refused", reason=f"reply refused: {why}"))

    def _claims(self, sent: Sent, reply: str) -> dict[str, Any]:
        claims = envelope.verify(reply, self.roster.silo_key(sent.silo), f"silo {sent.silo}")
        if claims.get("iss") != sent.silo or claims.get("aud") != COORDINATOR:
            raise SignatureError(
                f"the reply is issued by {str(claims.get('iss'))[:60]!r}, not by {sent.silo}"
            )
        if claims.get("request") != sent.request or claims.get("request_sha256") != envelope.digest(
            sent.token
        ):
            raise SignatureError(f"the reply answers another request than {sent.step.label} (a replay)")
        if claims.get("outcome") not in OUTCOMES:
            raise SignatureError(
                f"the reply's outcome {str(claims.get('outcome'))[:40]!r} is none of {OUTCOMES}"
            )
        if envelope.digest(claims.get("body", "")) != claims.get("body_sha256"):
            raise SignatureError("the reply's body does not match its digest")
        return claims

    def _verdict(self, sent: Sent, claims: dict[str, Any]) -> Verdict:
        reason = str(claims.get("reason", ""))[:2000]
        if claims["outcome"] != "served":
            return Verdict(claims["outcome"], reason=reason)
        try:
            record = load_reply(sent.step.reply, claims["body"].encode())
        except (ValueError, AttributeError, TypeError, RecursionError) as exc:
            return Verdict(
                "refused", reason=f"its reply to {sent.step.label} cannot be read: {str(exc)[:300]}"
            )
        if weight_digests(record) != claims.get("weights"):
            return Verdict("refused", reason="the weights its reply references differ from those it signed")
        if problem := self._key_problem(sent, record):
            return Verdict("refused", reason=problem)
        return Verdict("served", record=record)

    def _key_problem(self, sent: Sent, record: Any) -> str | None:
        """Why a fit reply's secure-aggregation keys are not its own for the round and job it was
        asked, or None: the coordinator drops such a silo before the round's key exchange, which
        every honest peer would otherwise refuse whole (they check the same three things)."""
        bundle, silo = getattr(record, "public_key", ""), sent.silo
        if not bundle:
            return None
        asked = (getattr(sent.step, "round_index", None), getattr(sent.step, "exchange", None))
        try:
            claims = envelope.verify(bundle, self.roster.silo_key(silo), f"silo {silo}")
        except (SignatureError, TrustError) as exc:
            return f"its secure-aggregation keys are not signed by it: {exc}"
        signed_for = (claims.get("round"), claims.get("exchange"))
        if claims.get("iss") != silo or signed_for != asked or getattr(record, "round", None) != asked[0]:
            return "its secure-aggregation keys (or its reply) are for another silo, round or job"
        return None

    def _record(self, sent: Sent, reply: str, verdict: Verdict) -> Verdict:
        decision = {"served": "accepted"}.get(verdict.outcome, verdict.outcome)
        self.audit.append(
            job=self.job,
            step=sent.step.label,
            silo=sent.silo,
            request=sent.request,
            decision=decision,
            reason=verdict.reason,
            request_jws=sent.token,
            reply_jws=reply,
        )
        return verdict
