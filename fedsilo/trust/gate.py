"""The silo's gate: every step request passes here before the silo loads anything.

`SiloGate.serve(token, work)` checks the request's signature under the pinned coordinator key,
that it is addressed to this silo, unexpired and never seen before (kept across restarts), and the
silo's policy; only then does `work(scenario, step)` run, with the scenario and step read from the
signed request (never from anywhere else). Whatever happens, the silo answers with a reply it
signs (served, declined with the rule, refused with the reason, or failed) and appends a record to
its own audit trail: what ran on its data and what left it.
"""

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from fedsilo.errors import SignatureError, SiloDeclined, TrustError, UnknownKind
from fedsilo.scenario import Scenario
from fedsilo.steps import Step, load_step
from fedsilo.trust import envelope
from fedsilo.trust.audit import AuditTrail
from fedsilo.trust.claims import ReplyContent, check_request, reply_claims
from fedsilo.trust.identity import Identity
from fedsilo.trust.roster import Roster
from fedsilo.trust.seen import SeenRequests

log = logging.getLogger("fedsilo")
Work = Callable[[Scenario, Step], Any]
KEPT_REQUEST_BYTES = 256 * 1024  # a larger refused request is kept in the audit trail by digest only


@dataclass(frozen=True)
class Serving:
    """The request a silo is serving now: who it is, the job, and the roster it checks peers with
    (secure aggregation signs its public keys with `identity` and checks its peers' against it)."""

    silo: str
    identity: Identity
    roster: Roster | None
    job: str
    request: str


SERVING: dict[str, Serving] = {}  # by silo: one process may serve several silos (embedded mode)


def serving(silo: str) -> Serving | None:
    """What `silo` is serving in this process now, or None outside a gate."""
    return SERVING.get(silo)


@dataclass(frozen=True)
class Opened:
    """A request that passed the gate: its token, claims, and the scenario and step it carries."""

    token: str
    claims: dict[str, Any]
    scenario: Scenario
    step: Step


@dataclass
class SiloGate:
    """One silo's checks on what it is asked; see the module docstring."""

    identity: Identity
    coordinator_key: str
    seen: SeenRequests
    audit: AuditTrail
    policy: Any = None  # fedsilo.trust.policy.SiloPolicy, or None: what a signed request asks runs
    roster: Roster | None = None
    view: Callable[[Scenario], Scenario] = field(default=lambda scenario: scenario)
    current: "Opened | None" = None  # the request opened last

    @property
    def silo(self) -> str:
        return self.identity.name

    def serve(self, token: str, work: Work) -> str:
        """The signed reply to the request `token`; runs `work` only for a request that passes."""
        opened = self.open(token)
        if isinstance(opened, str):
            return opened
        with self.serving(opened):
            return self.answer(opened, self.outcome(opened, work))

    def open(self, token: str) -> "Opened | str":
        """The checked request, or the signed reply refusing it (signature, address, expiry,
        replay) or declining it (the policy rule it breaks)."""
        claims: dict[str, Any] = {}
        try:
            claims = envelope.verify(token, self.coordinator_key, "the coordinator")
            check_request(claims, self.silo)
            scenario, step = self._arguments(claims)
            if not self.seen.first_time(claims["jti"], float(claims["exp"])):
                raise SignatureError(f"request {claims['jti'][:16]} was served before (a replay)")
        except (SignatureError, TrustError) as exc:
            log.warning("silo %s refused a request: %s", self.silo, exc)
            return self._answer(token, claims, ReplyContent("refused", reason=str(exc)))
        opened = self.current = Opened(token, claims, scenario, step)
        rule = self.policy.violation(scenario, step) if self.policy is not None else None
        if rule:
            log.warning("silo %s declined %s: %s", self.silo, step.label, rule)
            return self.answer(opened, ReplyContent("declined", reason=rule))
        return opened

    @contextmanager
    def serving(self, opened: "Opened") -> Iterator[None]:
        """While the silo works on `opened`: its identity and roster for secure aggregation."""
        self.current = opened
        with self.serving_silo():
            yield

    @contextmanager
    def serving_silo(self) -> Iterator[None]:
        """While the silo works on the request its gate opened last (see `serving`)."""
        claims = self.current.claims if self.current else {}
        job, request = str(claims.get("job", "")), str(claims.get("jti", ""))
        SERVING[self.silo] = Serving(self.silo, self.identity, self.roster, job, request)
        try:
            yield
        finally:
            SERVING.pop(self.silo, None)

    def outcome(self, opened: "Opened", work: Work) -> ReplyContent:
        """What `work` gave for an opened request: served, declined (SiloDeclined) or failed."""
        try:
            return ReplyContent("served", record=work(opened.scenario, opened.step))
        except SiloDeclined as exc:
            return ReplyContent("declined", reason=str(exc))
        except Exception as exc:  # the coordinator leaves this silo out of the step
            log.warning("silo %s could not do %s: %s", self.silo, opened.step.label, exc)
            return ReplyContent("failed", reason=f"{type(exc).__name__}: {exc}")

    def answer(self, opened: "Opened", content: ReplyContent) -> str:
        """The signed reply to an opened request, recorded in the silo's audit trail."""
        return self._answer(opened.token, opened.claims, content)

    def _arguments(self, claims: dict[str, Any]) -> tuple[Scenario, Step]:
        try:
            scenario = Scenario.model_validate(claims["args"]["scenario"])
            step = load_step(claims["args"]["step"])
        except (ValidationError, UnknownKind, KeyError, TypeError) as exc:
            raise SignatureError(f"the request's scenario or step cannot be read: {str(exc)[:300]}") from exc
        if step.kind != claims.get("step"):
            raise SignatureError(f"the request says step {claims.get('step')!r} but holds a {step.kind}")
        return self.view(scenario), step

    def _answer(self, token: str, claims: dict[str, Any], content: ReplyContent) -> str:
        reply = envelope.sign(self.identity, reply_claims(self.silo, claims, token, content))
        self.audit.append(
            job=str(claims.get("job", "")),
            step=str(claims.get("label", "")),
            silo=self.silo,
            request=str(claims.get("jti", "")),
            decision=content.outcome,
            reason=content.reason,
            request_jws=token if isinstance(token, str) and len(token) <= KEPT_REQUEST_BYTES else "",
            reply_jws=reply,
        )
        return reply
