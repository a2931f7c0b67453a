"""How the coordinator reaches its silos: one method, `ask(scenario, step, silos)`.

`SignedTransport` is the one transport the engine talks to. It signs the step for each silo
(fedsilo.trust.signer), hands the signed requests to a **courier** that delivers them and brings
back the silos' signed replies, and accepts only replies that the addressed silo signed for that
request. It decides nothing else: the coordinator screens the records (fedsilo.engine.screening).

Couriers: `InProcess` here (silos in this process, each behind its own gate; a test passes a plain
handler function, the shape of httpx's `MockTransport(handler)`), and in pipelines/transports.py
the Prefect ones (a task per silo and step in embedded mode; each silo's job run on its own worker
in distributed mode). Adding an orchestrator (Ray, plain processes) = one more courier.
"""

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from fedsilo.errors import SiloDeclined, TrustError
from fedsilo.scenario import Scenario
from fedsilo.steps import Step
from fedsilo.trust.audit import AuditTrail
from fedsilo.trust.claims import ReplyContent
from fedsilo.trust.credentials import Credentials, local_gate
from fedsilo.trust.gate import SiloGate
from fedsilo.trust.signer import Sent, Signer

log = logging.getLogger("fedsilo")
LIFETIME_MARGIN_SECONDS = 120  # a request stays valid this long past the step's own time limit


class Answers(NamedTuple):
    """What came back from one step: records by addressed silo, the silos with no answer, and
    those that declined (with the rule) or whose reply was refused (with why)."""

    replies: dict[str, Any]
    absent: list[str]
    declined: dict[str, str] = {}
    refused: dict[str, str] = {}
    arrived: list[str] = []  # silos in the order their replies came (records keep the asked order)


class Transport(Protocol):
    """Delivers steps to silos."""

    def ask(self, scenario: Scenario, step: Step, silos: Sequence[str]) -> Answers:
        """Ask each of `silos` to do `step` with `scenario`, and wait for their replies.

        Receives: the job's scenario as the coordinator sees it, a step record, and the names of
        the silos to ask (a subset of the scenario's). Returns `Answers`. Raises: nothing for a
        silo's failure (that silo is absent); only errors of the transport itself (its server
        unreachable), which end the job.
        """
        ...

    def close(self) -> None:
        """Release what the job held (silos' runs, models in memory); called once at the end."""
        ...


Check = Callable[[Sent, str], str | None]  # why a reply is not the addressed silo's answer, or None


class Courier(Protocol):
    """Carries signed requests to silos and their signed replies back."""

    def deliver(
        self, scenario: Scenario, step: Step, requests: Mapping[str, Sent], check: Check
    ) -> dict[str, str]:
        """Each silo's signed reply to its request (a silo with none is left out). A courier that
        can receive replies from anyone keeps waiting for a silo until `check` passes one."""
        ...

    def close(self) -> None: ...


def step_limit(scenario: Scenario, step: Step) -> float:
    """How long the coordinator waits for a step: the silos' time limit for each attempt, and the
    time a silo's worker may take to pick the job up."""
    federation = scenario.federation
    attempts = federation.silo_retries + 1 if step.retried else 1
    return federation.silo_timeout_seconds * attempts + federation.silo_pickup_seconds


def lifetime(scenario: Scenario, step: Step) -> float:
    """How long a request for `step` stays valid: the step's time limit and a margin."""
    return step_limit(scenario, step) + LIFETIME_MARGIN_SECONDS


class SignedTransport:
    """The engine's transport: signs, delivers through a courier, accepts signed replies."""

    def __init__(self, courier: Courier, signer: Signer):
        self.courier, self.signer = courier, signer

    def ask(self, scenario: Scenario, step: Step, silos: Sequence[str]) -> Answers:
        valid = lifetime(scenario, step)
        sent = {silo: self.signer.request(scenario, step, silo, valid) for silo in silos}
        replies = self.courier.deliver(scenario, step, sent, self._check)
        answers = Answers({}, [], {}, {}, [silo for silo in replies if silo in sent])
        for silo in silos:
            verdict = self.signer.accept(sent[silo], replies.get(silo))
            if verdict.outcome == "served":
                answers.replies[silo] = verdict.record
            elif verdict.outcome == "declined":
                answers.declined[silo] = verdict.reason
            elif verdict.outcome == "refused":
                answers.refused[silo] = verdict.reason
            else:
                answers.absent.append(silo)
            if verdict.outcome in ("refused", "failed"):
                log.warning("silo %s, %s: %s", silo, step.label, verdict.reason[:500])
        return answers

    @property
    def pins(self) -> dict[str, int]:
        """The most training examples the roster lets each silo claim (silos with a pin only)."""
        silos = self.signer.roster.silos
        return {silo: entry.max_examples for silo, entry in silos.items() if entry.max_examples}

    def _check(self, sent: Sent, reply: str) -> str | None:
        """Why a reply a courier received is not the addressed silo's answer (recorded as refused in
        the audit trail), or None."""
        problem = self.signer.problem(sent, reply)
        if problem:
            self.signer.refuse_forged(sent, reply, problem)
        return problem

    def close(self) -> None:
        self.courier.close()


def secured(courier: Courier, job: str, credentials: Credentials) -> SignedTransport:
    """The engine's transport for `job`: `courier` under the coordinator's key and roster (embedded
    couriers also take the per-job silo keys), with the coordinator's audit trail."""
    if hasattr(courier, "enrol"):
        courier.enrol(credentials)
    audit = AuditTrail(credentials.audit_path, "coordinator")
    return SignedTransport(courier, Signer(credentials.coordinator, credentials.roster, job, audit))


Handler = Callable[[Scenario, str, Step], Any]


class InProcess:
    """Silos in this process, each behind its own gate with the job's per-silo key.

    `deliver` opens each signed request at its silo's gate, then asks the opened step of those
    silos through `ask(scenario, step, silos) -> Answers`: what the silos themselves do, before
    they sign. By default each silo answers through `handler(scenario, silo, step)` (the real silo
    side, fedsilo.silo_steps.handle, or a test's plain function scripting the replies); a test may
    override `ask` to script a silo that lies, since whatever it returns is then signed by that
    silo. `policies` gives silos a policy (fedsilo.trust.policy.SiloPolicy) by name.
    """

    def __init__(self, handler: Handler | None = None, policies: Mapping[str, Any] | None = None):
        self.handler = handler
        self.policies = dict(policies or {})
        self.gates: dict[str, SiloGate] = {}
        self.credentials: Credentials | None = None

    def enrol(self, credentials: Credentials) -> None:
        """Take the job's per-silo keys (embedded mode makes them per job)."""
        self.credentials, self.gates = credentials, {}

    def gate(self, silo: str) -> SiloGate:
        if self.credentials is None:
            raise TrustError("in-process silos have no keys: run the job through fedsilo.engine.run_job")
        if silo not in self.gates:
            self.gates[silo] = local_gate(self.credentials, silo, self.policies.get(silo))
        return self.gates[silo]

    def deliver(
        self, scenario: Scenario, step: Step, requests: Mapping[str, Sent], check: Check
    ) -> dict[str, str]:
        replies, opened = {}, {}
        for silo, sent in requests.items():
            result = self.gate(silo).open(sent.token)
            if isinstance(result, str):
                replies[silo] = result
            else:
                opened[silo] = result
        for group in _same_arguments(opened):
            first = opened[group[0]]
            answers = self.ask(first.scenario, first.step, group)
            for silo in group:
                replies[silo] = self.gate(silo).answer(opened[silo], _content(silo, answers))
        return replies

    def ask(self, scenario: Scenario, step: Step, silos: Sequence[str]) -> Answers:
        """The silos' own answers to a step their gates let through (unsigned yet)."""
        replies, absent, declined = {}, [], {}
        for silo in silos:
            gate = self.gate(silo)
            try:
                with gate.serving_silo():
                    replies[silo] = self.work(scenario, silo, step)
            except SiloDeclined as exc:
                declined[silo] = str(exc)
            except Exception as exc:
                log.warning("silo %s did not answer %s: %s", silo, step.label, exc)
                absent.append(silo)
        return Answers(replies, absent, declined)

    def work(self, scenario: Scenario, silo: str, step: Step) -> Any:
        """`silo`'s record for a step its gate let through."""
        return (self.handler or _real_silos())(scenario, silo, step)

    def close(self) -> None:
        if self.handler is None:
            from fedsilo.silo import release_participants

            release_participants()


def _same_arguments(opened: Mapping[str, Any]) -> list[list[str]]:
    """Silos whose opened requests carry the same scenario and step, grouped."""
    groups: dict[str, list[str]] = {}
    for silo, request in opened.items():
        groups.setdefault(request.claims["args_sha256"], []).append(silo)
    return list(groups.values())


def _content(silo: str, answers: Answers) -> ReplyContent:
    if silo in answers.replies:
        return ReplyContent("served", record=answers.replies[silo])
    if silo in answers.declined:
        return ReplyContent("declined", reason=answers.declined[silo])
    if silo in answers.refused:
        return ReplyContent("failed", reason=answers.refused[silo])
    return ReplyContent("failed", reason="did not answer")


def _real_silos() -> Handler:
    from fedsilo.silo_steps import handle

    return handle
