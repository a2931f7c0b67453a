"""A job's wiring, built from the scenario and a transport: job name, tracker, weight paths,
strategy, and the coordinator. Every orchestrator (the Prefect flow, benchmarks, tests) calls
`run_job`; another orchestrator is one more transport, not a copy of this."""

import logging
from collections.abc import Callable, Sequence
from datetime import datetime

from fedsilo import names
from fedsilo.engine.job import Coordinator, Phase
from fedsilo.engine.protocols import Reporter, Tracker
from fedsilo.engine.start import open_job
from fedsilo.paths import JobPaths, exchange_root
from fedsilo.records import JobResult
from fedsilo.scenario import Scenario
from fedsilo.transport import Courier, secured
from fedsilo.trust.audit import AuditTrail
from fedsilo.trust.credentials import Credentials, job_credentials


def job_name(
    scenario: Scenario, started: datetime | None = None, given: str = "", resume_job: str = ""
) -> str:
    """The job's name: the one to resume, the one given, or the scenario's name and start time."""
    chosen = resume_job or given or names.default_job_name(scenario.name, started or datetime.now())
    return names.check_job_name(chosen, "job_name")


def run_job(
    scenario: Scenario,
    transport: Courier | Callable[[str, JobPaths], Courier],
    reporters: Sequence[Reporter] = (),
    job: str = "",
    resume_job: str = "",
    retrying: bool = False,
    tracker: Tracker | None = None,
    phase: Phase | None = None,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
    wrap=None,
    coordinator: type[Coordinator] = Coordinator,
    credentials: Credentials | None = None,
) -> JobResult:
    """Run one federated job of `scenario` through `transport` and record it (MLflow by default).

    `transport` is a courier (fedsilo.transport.Courier): every step goes out signed with the
    coordinator's key and every reply is accepted only under its silo's roster key (`credentials`:
    by default the files of distributed mode, or keys made for this job in embedded mode). The
    coordinator's audit trail is logged with the job's parent run (`audit/`).
    `transport` may be a factory `(job, paths) -> Courier` for couriers that need the job's
    name or folder; `wrap` adds an aggregation wrapper inside the privacy mechanisms, and
    `coordinator` may be a subclass that asks more steps (see README "Architecture"). Raises
    FederationError (JobNotFound for a `resume_job` MLflow does not hold) for expected
    failures; the transport is closed whatever happens.
    """
    job = job or job_name(scenario, given="", resume_job=resume_job)
    if tracker is None:
        from fedsilo.tracking import FederationTracker

        tracker = FederationTracker(scenario, job)
    resume = open_job(tracker, resume_job, retrying)
    paths = JobPaths.under(exchange_root(scenario, tracker.artifact_uri), job)
    courier = transport if hasattr(transport, "deliver") else transport(job, paths)
    credentials = credentials or job_credentials(scenario)
    signed = secured(courier, job, credentials)
    audit = signed.signer.audit
    runner = coordinator(
        scenario, job, signed, tracker, paths, reporters, logger, resume=resume, phase=phase, wrap=wrap
    )
    try:
        return runner.run()
    finally:
        signed.close()
        log_audit(tracker, audit, credentials)


def log_audit(tracker: Tracker, audit: AuditTrail, credentials: Credentials) -> None:
    """The coordinator's audit trail (and, for per-job keys, the roster that checks it) with the
    job's parent run, under `audit/`: `fedsilo audit verify coordinator.jsonl --roster roster.yaml`."""
    import tempfile
    from pathlib import Path

    from fedsilo.trust.roster import save_roster

    with tempfile.TemporaryDirectory() as folder:
        chain = Path(folder) / "coordinator.jsonl"
        audit.export(chain)
        tracker.log_file(chain, "audit")
        tracker.log_file(save_roster(credentials.roster, Path(folder) / "roster.yaml"), "audit")
