"""The keys a job runs under, on each side.

Coordinator side (`job_credentials`): distributed jobs use the coordinator's key from its state
folder and the roster the operator keeps; embedded jobs make a key pair per silo and job, so every
job runs the same signing and checking code. Silo side (`silo_gate`): a distributed silo's gate is
built from its worker's environment: its key (made on first start), its copy of the roster (which
pins the coordinator's key), its policy file, its replay store and its audit trail.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fedsilo.errors import TrustError
from fedsilo.privacy.pending import state_folder
from fedsilo.scenario import Scenario
from fedsilo.trust.audit import AuditTrail
from fedsilo.trust.gate import SiloGate
from fedsilo.trust.identity import COORDINATOR, Identity, coordinator_folder, load_identity, load_or_make
from fedsilo.trust.roster import Roster, RosterEntry, load_roster, roster_path
from fedsilo.trust.seen import SeenRequests

POLICY_ENV = "FEDSILO_POLICY"
AUDIT_FILE = "audit.jsonl"


@dataclass
class Credentials:
    """The coordinator's identity and roster; in embedded mode also the silos' per-job keys."""

    coordinator: Identity
    roster: Roster
    silos: dict[str, Identity] = field(default_factory=dict)
    audit_path: Path | None = None  # the coordinator's chain; None: kept in memory for the job


def ephemeral(silos: list[str]) -> Credentials:
    """Fresh keys for one embedded job: the coordinator's and one per silo, enrolled in a roster."""
    coordinator = Identity.generate(COORDINATOR)
    keys = {silo: Identity.generate(silo) for silo in silos}
    entries = {silo: RosterEntry(public_key=key.public_key) for silo, key in keys.items()}
    return Credentials(coordinator, Roster(coordinator=coordinator.public_key, silos=entries), keys)


def from_files(roster: str | Path | None = None, folder: str | Path | None = None) -> Credentials:
    """The coordinator's key and roster on disk (distributed mode); TrustError when the roster does
    not pin this coordinator's key."""
    folder = Path(folder) if folder else coordinator_folder()
    identity = load_identity(folder, COORDINATOR)
    loaded = load_roster(roster)
    if loaded.coordinator_key() != identity.public_key:
        raise TrustError(
            f"the roster pins another coordinator key than the one in {folder}; silos would refuse every "
            f"request: put {identity.public_key} in the roster "
            "(`fedsilo keys init --coordinator --roster FILE`)"
        )
    return Credentials(identity, loaded, audit_path=folder / AUDIT_FILE)


def job_credentials(scenario: Scenario) -> Credentials:
    """The credentials of a job of `scenario`: from files when distributed, made now when embedded."""
    if scenario.federation.mode == "distributed":
        credentials = from_files()
        missing = [silo for silo in scenario.silo_names() if silo not in credentials.roster.silos]
        if missing:
            raise TrustError(
                f"silos {', '.join(missing)} are not in the roster {roster_path()}: enrol each with "
                "`fedsilo roster add SILO PUBLIC_KEY` (its worker prints its key), or leave it out"
            )
        return credentials
    return ephemeral(scenario.silo_names())


def local_gate(credentials: Credentials, silo: str, policy=None) -> SiloGate:
    """An embedded silo's gate, with its per-job key; its audit trail is kept in its state folder."""
    identity = credentials.silos.get(silo)
    if identity is None:
        raise TrustError(f"silo {silo} has no key in this job (it is not one of the scenario's silos)")
    audit = AuditTrail(state_folder(silo) / AUDIT_FILE, silo)
    return SiloGate(identity, credentials.roster.coordinator_key(), SeenRequests(None), audit, policy,
                    credentials.roster)  # fmt: skip


def silo_gate(silo: str, view: Callable[[Scenario], Scenario]) -> SiloGate:
    """A distributed silo's gate, from its worker's environment (`fedsilo worker --roster --policy`):
    its key in its state folder (made on first start), the roster's coordinator key, its policy."""
    folder = state_folder(silo)
    identity, _ = load_or_make(folder, silo)
    roster = load_roster()
    policy = None
    if os.environ.get(POLICY_ENV):
        from fedsilo.trust.policy import load_policy

        policy = load_policy(os.environ[POLICY_ENV])
    return SiloGate(identity, roster.coordinator_key(), SeenRequests(folder / "seen-requests.sqlite"),
                    AuditTrail(folder / AUDIT_FILE, silo), policy, roster, view)  # fmt: skip
