"""Signing and checking every step: what it costs per step, and beside a whole job, in one run.

Per step: a Fit request of the smoke scenario (with its WeightRef) and a FitReport reply (with a
local Evaluation) go through the four parts of a signed step, each timed over `--repeats`
repetitions: the coordinator signs the request; the silo's gate opens it (signature, claims,
replay insert, no policy); the silo signs its reply and records it; the coordinator checks the
reply and records it. Two set-ups run interleaved: **durable** (as a distributed silo and
coordinator: a SQLite replay store and audit trails on disk, each append fsynced) and **in
memory** (replay store and audit trails in memory, no fsync). The replay insert and an audit
append are also timed alone in each set-up.

Whole job: the smoke scenario's embedded job through the engine (NullTracker, weights in
memory), alternately signed (the engine's only path: per-job keys, each silo behind its gate
with its audit trail on disk) and unsigned (a transport that calls the silo handler directly,
as InProcess did before signing), after one unsigned warm-up job. In a signed job, the seconds
its steps take less the seconds its silos work are what signing, checking and recording cost.

    python -m bench.signing [--repeats 500] [--jobs 10] [--set federation.rounds=2]
"""

import argparse
import logging
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import emit, start
from fedsilo.engine import Coordinator, NullTracker
from fedsilo.errors import SiloDeclined
from fedsilo.messages import Evaluation, FitReport, WeightRef
from fedsilo.paths import JobPaths
from fedsilo.privacy.pending import STATE_ENV
from fedsilo.scenario import Scenario, load_scenario
from fedsilo.silo import release_participants
from fedsilo.silo_steps import handle  # registers the silo's step handlers
from fedsilo.steps import Fit, Step
from fedsilo.transport import Answers, InProcess, lifetime, secured
from fedsilo.trust import envelope
from fedsilo.trust.audit import AuditTrail
from fedsilo.trust.claims import ReplyContent, request_claims
from fedsilo.trust.credentials import ephemeral
from fedsilo.trust.gate import SiloGate
from fedsilo.trust.seen import SeenRequests
from fedsilo.trust.signer import Signer

BENCH = "signing"
SCENARIO = Path(__file__).parents[1] / "scenarios" / "smoke.yaml"
PARTS = ("sign_request", "open_request", "sign_reply", "check_reply")
SETUPS = ("durable", "memory")
WARM_UP = 20  # repetitions run first and not kept
log = logging.getLogger("fedsilo")


def fit_step(scenario: Scenario, silo: str) -> tuple[Fit, FitReport]:
    """A round-1 Fit request as the engine sends it, and the FitReport a silo answers it with."""
    paths = JobPaths.under("memory://fedsilo/jobs", "smoke-bench")
    weights = WeightRef(paths.global_uri(0), "ab" * 32, 17_623_464)
    labels = len(scenario.data.labels or [])
    confusion = [[3 if row == column else 1 for column in range(labels)] for row in range(labels)]
    local = Evaluation(silo, 0.3, 0.21, 1.58, confusion)
    update = WeightRef(paths.update_uri(1, silo), "cd" * 32, 17_623_464)
    return Fit(1, weights, paths.root, {}), FitReport(silo, 1, update, 30, 1.6071, local, 2.37, 4)


def parties(scenario: Scenario, folder: Path | None) -> tuple[Signer, SiloGate]:
    """The coordinator's signer and one silo's gate; stores on disk under `folder`, or in memory."""
    silo = scenario.silo_names()[0]
    keys = ephemeral([silo])
    file = (lambda name: folder / name) if folder else (lambda name: None)
    signer = Signer(
        keys.coordinator, keys.roster, "bench", AuditTrail(file("coordinator.jsonl"), "coordinator")
    )
    gate = SiloGate(
        keys.silos[silo],
        keys.roster.coordinator_key(),
        SeenRequests(file("seen-requests.sqlite")),
        AuditTrail(file("silo.jsonl"), silo),
    )
    return signer, gate


def one_step(
    signer: Signer, gate: SiloGate, scenario: Scenario, step: Fit, reply: FitReport
) -> tuple[list[float], str, str]:
    """Seconds of each part of one signed step (PARTS, in order), the request and the reply."""
    marks = [time.perf_counter()]
    sent = signer.request(scenario, step, gate.silo, lifetime(scenario, step))
    marks.append(time.perf_counter())
    opened = gate.open(sent.token)
    marks.append(time.perf_counter())
    if isinstance(opened, str):
        raise RuntimeError("the gate refused the benchmark's request")
    answer = gate.answer(opened, ReplyContent("served", record=reply))
    marks.append(time.perf_counter())
    verdict = signer.accept(sent, answer)
    marks.append(time.perf_counter())
    if verdict.outcome != "served":
        raise RuntimeError(f"the benchmark's reply was not accepted: {verdict.reason}")
    return [after - before for before, after in zip(marks, marks[1:])], sent.token, answer


def alone(gate: SiloGate, request: str, reply: str) -> list[float]:
    """Seconds of a replay insert and of one audit append of a step's record, each on its own."""
    began = time.perf_counter()
    gate.seen.first_time(uuid.uuid4().hex, time.time() + 600)
    inserted = time.perf_counter()
    gate.audit.append(job="bench", step="fit-round-1", silo=gate.silo, request="alone", decision="served",
                      request_jws=request, reply_jws=reply)  # fmt: skip
    return [inserted - began, time.perf_counter() - inserted]


def milliseconds(samples: Sequence[float]) -> tuple[float, float]:
    """Median and 95th percentile of `samples` (seconds), in milliseconds."""
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1000, p95 * 1000


def per_step(
    scenario: Scenario, repeats: int
) -> tuple[dict[str, dict[str, tuple[float, float]]], dict[str, int]]:
    """Each part's median and p95 (ms) per set-up, interleaving the set-ups repetition by repetition,
    and the sizes of a request and a reply in bytes."""
    step, reply = fit_step(scenario, scenario.silo_names()[0])
    names = (*PARTS, "total", "replay_insert", "audit_append")
    samples: dict[str, dict[str, list[float]]] = {setup: {name: [] for name in names} for setup in SETUPS}
    with tempfile.TemporaryDirectory() as scratch:
        sides = {"durable": parties(scenario, Path(scratch)), "memory": parties(scenario, None)}
        for repetition in range(WARM_UP + repeats):
            for setup in SETUPS if repetition % 2 else SETUPS[::-1]:  # each goes first half the time
                signer, gate = sides[setup]
                parts, request, answer = one_step(signer, gate, scenario, step, reply)
                parts += [sum(parts), *alone(gate, request, answer)]
                for name, seconds in zip(names, parts):
                    samples[setup][name].append(seconds)
    claims = request_claims("bench", gate.silo, scenario, step, 0, 600)
    sizes = {"request": len(request), "reply": len(answer), "request_claims": len(envelope.canonical(claims))}
    for name, size in sizes.items():
        emit(BENCH, f"{name}_bytes", size, "bytes")
    figures = {}
    for setup, parts in samples.items():
        figures[setup] = {name: milliseconds(values[WARM_UP:]) for name, values in parts.items()}
        for name, (median, p95) in figures[setup].items():
            emit(BENCH, f"{setup}_{name}", round(median, 3), "ms", p95_ms=round(p95, 3), repeats=repeats)
    return figures, sizes


class Unsigned:
    """Silos in this process answering through the silo handler directly: no keys, no gate, no
    audit trail (what InProcess did before steps were signed). It has no `deliver`, so the
    Coordinator takes it as a Transport and signs nothing."""

    def ask(self, scenario: Scenario, step: Step, silos: Sequence[str]) -> Answers:
        replies, absent, declined = {}, [], {}
        for silo in silos:
            try:
                replies[silo] = handle(scenario, silo, step)
            except SiloDeclined as exc:
                declined[silo] = str(exc)
            except Exception as exc:  # as InProcess: the silo is absent from the step
                log.warning("silo %s did not answer %s: %s", silo, step.label, exc)
                absent.append(silo)
        return Answers(replies, absent, declined)

    def close(self) -> None:
        release_participants()


class Timed:
    """A transport that adds up the seconds its steps take (`seconds`), around another."""

    def __init__(self, inner: Any):
        self.inner, self.seconds = inner, 0.0

    def ask(self, scenario: Scenario, step: Step, silos: Sequence[str]) -> Answers:
        began = time.perf_counter()
        try:
            return self.inner.ask(scenario, step, silos)
        finally:
            self.seconds += time.perf_counter() - began

    def close(self) -> None:
        self.inner.close()


class WorkTimed(InProcess):
    """InProcess that adds up the seconds its silos work (`working`): the rest of a signed step is
    signing, checking and recording."""

    working = 0.0

    def ask(self, scenario: Scenario, step: Step, silos: Sequence[str]) -> Answers:
        began = time.perf_counter()
        try:
            return super().ask(scenario, step, silos)
        finally:
            self.working += time.perf_counter() - began


def one_job(scenario: Scenario, signed: bool, job: str) -> dict[str, Any]:
    """Wall seconds of one embedded job, its final accuracy, the seconds its steps took, and (signed)
    the seconds spent signing, checking and recording them and the requests and steps signed."""
    began = time.perf_counter()
    courier = WorkTimed()
    transport = Timed(secured(courier, job, ephemeral(scenario.silo_names())) if signed else Unsigned())
    paths = JobPaths.under("memory://fedsilo/bench-signing", job)
    try:
        result = Coordinator(scenario, job, transport, NullTracker(), paths).run()
    finally:
        transport.close()
    attempts = transport.inner.signer.attempts if signed else {}
    return {
        "seconds": time.perf_counter() - began,
        "accuracy": result.final_accuracy,
        "step_seconds": round(transport.seconds, 4),
        "signing_seconds": round(transport.seconds - courier.working, 4) if signed else 0.0,
        "requests": sum(attempts.values()),
        "steps": len({label for label, _ in attempts}),
    }


def whole_job(scenario: Scenario, jobs: int) -> dict[str, list[dict[str, Any]]]:
    """`jobs` signed and `jobs` unsigned runs, alternating, after an unsigned warm-up job; the silos'
    audit trails go to a scratch state folder."""
    runs: dict[str, list[dict[str, Any]]] = {"signed": [], "unsigned": []}
    before = os.environ.get(STATE_ENV)
    with tempfile.TemporaryDirectory() as scratch:
        os.environ[STATE_ENV] = scratch
        try:
            one_job(scenario, False, "warm-up")
            for index in range(jobs):
                for arm in ("signed", "unsigned") if index % 2 == 0 else ("unsigned", "signed"):
                    run = one_job(scenario, arm == "signed", f"{arm}-{index}")
                    runs[arm].append(run)
                    details = {key: value for key, value in run.items() if key != "seconds"}
                    emit(BENCH, f"{arm}_job", round(run["seconds"], 3), "s", run=index, **details)
        finally:
            if before is None:
                os.environ.pop(STATE_ENV, None)
            else:
                os.environ[STATE_ENV] = before
    return runs


def median_of(runs: dict[str, list[dict[str, Any]]], arm: str, key: str) -> float:
    """The median of `key` over an arm's jobs."""
    return statistics.median(run[key] for run in runs[arm])


LABELS = {
    "sign_request": "coordinator signs the request",
    "open_request": "silo's gate opens it (signature, claims, replay, policy)",
    "sign_reply": "silo signs its reply and records it",
    "check_reply": "coordinator checks the reply and records it",
    "total": "total per step",
    "replay_insert": "alone: one replay-store insert",
    "audit_append": "alone: one audit append",
}


def print_steps(figures: dict[str, dict[str, tuple[float, float]]], sizes: dict[str, int]) -> None:
    """The per-step table: median / p95 milliseconds of each part, per set-up."""
    print(f"\nper step, ms median / p95{'durable (disk, fsync)':>52}{'in memory':>22}")
    for name, label in LABELS.items():
        cells = [f"{figures[setup][name][0]:.3f} / {figures[setup][name][1]:.3f}" for setup in SETUPS]
        print(f"{label:<58}{cells[0]:>20}{cells[1]:>22}")
    request, claims, reply = sizes["request"], sizes["request_claims"], sizes["reply"]
    print(f"request {request} bytes (its claims as JSON: {claims}), reply {reply} bytes")


def print_jobs(runs: dict[str, list[dict[str, Any]]], step_ms: tuple[float, float]) -> None:
    """The whole-job table and ratio, and what the signed requests cost at `step_ms` (low, high) each."""
    print(f"\n{'whole job':<10}{'wall s: median (min)':>22}{'signing s: median':>19}   wall s, each run")
    for arm, done in runs.items():
        wall = f"{median_of(runs, arm, 'seconds'):.2f} ({min(run['seconds'] for run in done):.2f})"
        each = ", ".join(f"{run['seconds']:.2f}" for run in done)
        print(f"{arm:<10}{wall:>22}{median_of(runs, arm, 'signing_seconds'):>19.3f}   {each}")
    ratio = median_of(runs, "signed", "seconds") / median_of(runs, "unsigned", "seconds")
    share = statistics.median(run["signing_seconds"] / run["seconds"] for run in runs["signed"])
    requests, steps = runs["signed"][0]["requests"], runs["signed"][0]["steps"]
    low, high = (requests * milliseconds for milliseconds in step_ms)
    print(f"signed / unsigned wall, medians: {ratio:.3f}x; signing inside a signed job: {share:.1%} of it")
    print(f"{requests} requests signed over {steps} steps: {low:.0f}-{high:.0f} ms at the per-step medians")


def emit_jobs(runs: dict[str, list[dict[str, Any]]]) -> None:
    """The whole-job figures: wall ratio of the medians, signing's share of a signed job, requests signed."""
    wall = {arm: median_of(runs, arm, "seconds") for arm in runs}
    fastest = {f"{arm}_min_s": round(min(run["seconds"] for run in runs[arm]), 3) for arm in runs}
    medians = {f"{arm}_s": round(value, 3) for arm, value in wall.items()}
    ratio = round(wall["signed"] / wall["unsigned"], 4)
    emit(BENCH, "job_wall_ratio", ratio, "signed / unsigned", jobs=len(runs["signed"]), **medians, **fastest)
    share = statistics.median(run["signing_seconds"] / run["seconds"] for run in runs["signed"])
    signing = round(median_of(runs, "signed", "signing_seconds"), 4)
    emit(BENCH, "job_signing_share", round(share, 4), "fraction of a signed job's wall", signing_s=signing)
    signed = runs["signed"][0]
    same = len({run["accuracy"] for done in runs.values() for run in done}) == 1
    emit(BENCH, "job_requests_signed", signed["requests"], "requests", steps=signed["steps"], same=same)


def main() -> None:
    layout = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=layout)
    parser.add_argument("--scenario", default=str(SCENARIO), help="the scenario (default: smoke)")
    parser.add_argument("--repeats", type=int, default=500, help="signed steps timed per set-up")
    parser.add_argument("--jobs", type=int, default=10, help="whole jobs per arm, alternating")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a field")
    args = parser.parse_args()
    start(BENCH)
    scenario = load_scenario(args.scenario, args.set)
    figures, sizes = per_step(scenario, args.repeats)
    runs = whole_job(scenario, args.jobs)
    emit_jobs(runs)
    print_steps(figures, sizes)
    print_jobs(runs, (figures["memory"]["total"][0], figures["durable"]["total"][0]))


if __name__ == "__main__":
    main()
