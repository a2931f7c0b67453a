"""The audit trail with real Ed25519 keys and real JWS: the chain verifies, a changed, removed or
wrongly signed record is reported at its position, and appends from two processes keep one chain."""

import json
import multiprocessing
import stat
from dataclasses import dataclass

import pytest

from fedsilo.errors import TrustError
from fedsilo.trust.audit import (
    GENESIS,
    AuditTrail,
    format_table,
    record_hash,
    verify_chain,
    verify_command,
)
from fedsilo.trust.envelope import digest, sign
from fedsilo.trust.identity import COORDINATOR, Identity
from fedsilo.trust.roster import Roster, RosterEntry, save_roster

SILOS = ("hospital-a", "hospital-b")


@dataclass
class Parties:
    coordinator: Identity
    silos: dict[str, Identity]
    roster: Roster

    def exchange(self, silo: str, request: str, replier: str | None = None) -> dict[str, str]:
        """A signed step request to `silo` and its reply (signed by `replier`, default the silo)."""
        claims = {"job": "job-1", "step": "train", "silo": silo, "request": request}
        reply = {"request": request, "silo": silo, "examples": 100}
        return {
            "request_jws": sign(self.coordinator, claims),
            "reply_jws": sign(self.silos[replier or silo], reply),
        }


@pytest.fixture(scope="module")
def parties() -> Parties:
    coordinator = Identity.generate(COORDINATOR)
    silos = {name: Identity.generate(name) for name in SILOS}
    entries = {name: RosterEntry(public_key=identity.public_key) for name, identity in silos.items()}
    return Parties(coordinator, silos, Roster(coordinator=coordinator.public_key, silos=entries))


def fill(trail: AuditTrail, parties: Parties, count: int, start: int = 1) -> None:
    for number in range(start, start + count):
        silo = SILOS[number % 2]
        request = f"r{number}"
        trail.append(job="job-1", step="train", silo=silo, request=request, decision="accepted",
                     **parties.exchange(silo, request))  # fmt: skip


@pytest.fixture
def chain(tmp_path, parties):
    path = tmp_path / "audit.jsonl"
    fill(AuditTrail(path, COORDINATOR), parties, 4)
    return path


def lines_of(path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def test_a_chain_of_signed_records_verifies_with_and_without_the_roster(chain, parties):
    report = verify_chain(chain)
    assert report.ok and report.problems == []
    assert verify_chain(chain, parties.roster).ok
    records = report.records
    assert [record["seq"] for record in records] == [1, 2, 3, 4]
    assert records[0]["prev"] == GENESIS
    assert all(later["prev"] == earlier["hash"] for earlier, later in zip(records, records[1:]))
    first = records[0]
    assert first["keeper"] == COORDINATOR and first["signed_by"] == COORDINATOR
    assert first["request_sha256"] == digest(first["request_jws"])
    assert first["reply_sha256"] == digest(first["reply_jws"])
    assert first["when"].endswith("Z") and first["hash"] == record_hash(first)


def test_a_changed_field_is_reported_at_its_position(chain):
    lines = lines_of(chain)
    record = json.loads(lines[1])
    record["decision"] = "declined"
    lines[1] = json.dumps(record) + "\n"
    chain.write_text("".join(lines))
    report = verify_chain(chain)
    assert not report.ok
    assert [position for position, _ in report.problems] == [2]
    assert "was changed" in report.problems[0][1]


def test_a_changed_and_rehashed_record_breaks_the_link_to_the_next(chain):
    lines = lines_of(chain)
    record = json.loads(lines[1])
    record["reason"] = "nothing happened here"
    record["hash"] = record_hash(record)
    lines[1] = json.dumps(record) + "\n"
    chain.write_text("".join(lines))
    problems = verify_chain(chain).problems
    assert [position for position, _ in problems] == [3]
    assert "prev does not match the hash of the record before (seq 2)" in problems[0][1]


def test_a_removed_record_is_reported_at_its_position(chain):
    lines = lines_of(chain)
    chain.write_text("".join(lines[:1] + lines[2:]))
    report = verify_chain(chain)
    assert not report.ok
    assert {position for position, _ in report.problems} == {2}
    messages = [message for _, message in report.problems]
    assert "record 2 is missing: seq jumps from 1 to 3" in messages
    assert any(message.startswith("prev does not match") for message in messages)


def test_a_line_that_is_no_record_is_reported_and_appends_stop(chain, parties):
    chain.write_text(chain.read_text() + '{"seq": 5, "when"')
    report = verify_chain(chain)
    assert {position for position, _ in report.problems} == {5}
    assert len(report.records) == 4
    with pytest.raises(TrustError, match="does not end in a whole audit record"):
        AuditTrail(chain, COORDINATOR)


def test_a_reply_signed_by_another_silo_is_caught_only_with_the_roster(tmp_path, chain, parties, capsys):
    trail = AuditTrail(chain, COORDINATOR)
    forged = parties.exchange("hospital-a", "r5", replier="hospital-b")
    trail.append(job="job-1", step="train", silo="hospital-a", request="r5", decision="accepted", **forged)
    assert verify_chain(chain).ok
    problems = verify_chain(chain, parties.roster).problems
    assert [position for position, _ in problems] == [5]
    assert problems[0][1].startswith("reply: ") and "hospital-a" in problems[0][1]

    roster_file = save_roster(parties.roster, tmp_path / "roster.yaml")
    assert verify_command(str(chain)) == 0
    assert "chain OK: 5 records" in capsys.readouterr().out
    assert verify_command(str(chain), str(roster_file)) == 1
    out = capsys.readouterr().out
    assert "record 5: reply: " in out and "chain BROKEN: 1 problem(s) in 5 records" in out


def test_a_silo_no_longer_in_the_roster_is_named_not_a_crash(chain, parties):
    entries = {"hospital-a": parties.roster.silos["hospital-a"]}
    smaller = Roster(coordinator=parties.roster.coordinator, silos=entries)
    problems = verify_chain(chain, smaller).problems
    assert [position for position, _ in problems] == [1, 3]  # hospital-b's records
    assert all("silo hospital-b is not in the roster" in message for _, message in problems)


def test_a_refused_request_that_is_no_jws_is_recorded_and_does_not_break_the_chain(chain, parties):
    trail = AuditTrail(chain, "hospital-a")
    record = trail.append(job="job-1", step="train", silo="hospital-a", request="?", decision="refused",
                          reason="not a compact JWS", request_jws="garbage")  # fmt: skip
    assert record["signed_by"] == "" and record["request_sha256"] == digest("garbage")
    assert verify_chain(chain, parties.roster).ok


def test_reopening_a_trail_continues_its_seq_and_prev(chain, parties):
    last = verify_chain(chain).records[-1]
    reopened = AuditTrail(chain, COORDINATOR)
    record = reopened.append(job="job-1", step="evaluate", silo="hospital-b", request="r5", decision="absent")
    assert record["seq"] == 5 and record["prev"] == last["hash"]
    assert record["request_sha256"] == record["reply_sha256"] == record["signed_by"] == ""
    assert reopened.records[-1] == record and len(reopened.records) == 5
    assert verify_chain(chain).ok


def append_many(path: str, job: str, count: int, barrier) -> None:
    trail = AuditTrail(path, COORDINATOR)
    barrier.wait()
    for number in range(count):
        trail.append(job=job, step="train", silo="hospital-a", request=f"{job}-{number}", decision="served")


def test_two_processes_appending_at_once_keep_one_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [context.Process(target=append_many, args=(str(path), job, 20, barrier)) for job in ("a", "b")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0]
    report = verify_chain(path)
    assert report.ok, report.problems
    assert [record["seq"] for record in report.records] == list(range(1, 41))
    assert sorted(record["job"] for record in report.records) == ["a"] * 20 + ["b"] * 20


def test_the_file_and_its_folder_are_made_private(tmp_path):
    path = tmp_path / "state" / "hospital-a" / "audit.jsonl"
    trail = AuditTrail(path, "hospital-a")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    trail.append(job="j", step="train", silo="hospital-a", request="r1", decision="served")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_an_in_memory_trail_exports_a_chain_that_verifies(tmp_path, parties):
    trail = AuditTrail(None, COORDINATOR)
    fill(trail, parties, 3)
    record = trail.append(job="job-1", step="train", silo="hospital-a", request="r4", decision="failed",
                          reason="x" * 600)  # fmt: skip
    assert len(record["reason"]) == 500
    assert [r["seq"] for r in trail.records] == [1, 2, 3, 4]
    exported = trail.export(tmp_path / "out" / "audit.jsonl")
    assert stat.S_IMODE(exported.stat().st_mode) == 0o600
    report = verify_chain(exported, parties.roster)
    assert report.ok and report.records == trail.records


def test_a_decision_outside_the_vocabulary_is_refused():
    with pytest.raises(ValueError, match="decision 'done' is not one of served, declined"):
        AuditTrail(None, COORDINATOR).append(job="j", step="s", silo="x", request="r", decision="done")


def test_format_table_shows_each_record_and_the_verdict(chain):
    table = format_table(verify_chain(chain))
    header, rule, *rows = table.splitlines()
    assert header.split() == ["#", "when", "keeper", "job", "step", "silo", "signed_by", "decision", "reason"]
    assert set(rule) == {"-", " "}
    assert len(rows) == 5 and rows[-1] == "chain OK: 4 records"
    assert all("accepted" in row and COORDINATOR in row for row in rows[:4])

    lines = lines_of(chain)
    chain.write_text("".join(lines[:1] + lines[2:]))
    table = format_table(verify_chain(chain))
    assert "record 2: record 2 is missing: seq jumps from 1 to 3" in table
    assert table.splitlines()[-1] == "chain BROKEN: 2 problem(s) in 3 records"


def test_verify_command_names_a_missing_file(tmp_path):
    with pytest.raises(TrustError, match="no audit trail at .*nowhere.jsonl"):
        verify_command(str(tmp_path / "nowhere.jsonl"), None)
