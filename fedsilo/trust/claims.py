"""What a signed step request and a signed reply say (the JWS payloads), in one place.

A request (signed by the coordinator) carries everything that decides what the silo does: the
job, the addressed silo, the step's kind and label, its round, the attempt, a request id, when it
was made and when it expires, and the step and scenario themselves with their digest. A reply
(signed by the silo) names the request it answers (id and digest), its outcome, its record as JSON
and the sha256 of every weight file the record references.
"""

import time
import uuid
from dataclasses import dataclass
from typing import Any

from fedsilo.errors import SignatureError
from fedsilo.messages import WeightRef, dump_reply
from fedsilo.scenario import Scenario
from fedsilo.steps import Step, dump_step
from fedsilo.trust.envelope import digest
from fedsilo.trust.identity import COORDINATOR

OUTCOMES = ("served", "declined", "refused", "failed")
CLOCK_SKEW_SECONDS = 300  # how far a request's issue time may lie in the silo's future


def request_claims(
    job: str, silo: str, scenario: Scenario, step: Step, attempt: int, lifetime: float
) -> dict[str, Any]:
    """The claims of a new request for `silo` (a fresh request id each time)."""
    arguments = {"scenario": scenario.model_dump(mode="json"), "step": dump_step(step)}
    now = time.time()
    return {
        "iss": COORDINATOR,
        "aud": silo,
        "job": job,
        "step": step.kind,
        "label": step.label,
        "round": getattr(step, "round_index", None),
        "attempt": attempt,
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + lifetime,
        "args_sha256": digest(arguments),
        "args": arguments,
    }


def check_request(claims: dict[str, Any], silo: str) -> None:
    """SignatureError unless the (signature-checked) request is the coordinator's, for `silo`, in
    its lifetime, and its arguments match their digest."""
    if claims.get("iss") != COORDINATOR:
        raise SignatureError(f"the request is issued by {str(claims.get('iss'))[:60]!r}, not the coordinator")
    if claims.get("aud") != silo:
        raise SignatureError(f"the request is addressed to {str(claims.get('aud'))[:60]!r}, not to {silo}")
    now, issued, expires = time.time(), claims.get("iat"), claims.get("exp")
    if not isinstance(expires, int | float) or not isinstance(issued, int | float):
        raise SignatureError("the request carries no issue or expiry time")
    if expires < now:
        raise SignatureError(f"the request expired {now - expires:.0f}s ago")
    if issued > now + CLOCK_SKEW_SECONDS:
        raise SignatureError("the request is issued in the future")
    if not isinstance(claims.get("jti"), str) or not claims["jti"]:
        raise SignatureError("the request carries no request id")
    if digest(claims.get("args")) != claims.get("args_sha256"):
        raise SignatureError("the request's arguments do not match their digest")


@dataclass(frozen=True)
class ReplyContent:
    """A reply before signing: what happened and, when served, the record."""

    outcome: str
    record: Any = None
    reason: str = ""


def reply_claims(silo: str, request: dict[str, Any], request_token: str, content: ReplyContent) -> dict:
    """The claims a silo signs for its reply to `request` (claims of an opened request; empty for
    one that could not be opened, whose id and digest then come from the token alone)."""
    body = dump_reply(content.record).decode() if content.record is not None else ""
    return {
        "iss": silo,
        "aud": COORDINATOR,
        "job": request.get("job", ""),
        "request": request.get("jti", ""),
        "request_sha256": digest(request_token),
        "iat": time.time(),
        "outcome": content.outcome,
        "reason": content.reason[:2000],
        "body": body,
        "body_sha256": digest(body),
        "weights": weight_digests(content.record),
    }


def weight_digests(record: Any) -> dict[str, str]:
    """uri -> sha256 of every WeightRef a reply record holds (at any depth of its fields)."""
    found: dict[str, str] = {}

    def walk(value: Any) -> None:
        if isinstance(value, WeightRef):
            found[value.uri] = value.sha256
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)
        elif hasattr(value, "__dataclass_fields__"):
            for name in value.__dataclass_fields__:
                walk(getattr(value, name))

    walk(record)
    return found
