"""The audit trail: one JSON line per request a party handles, each record hash-chained to the one before.

The coordinator and each silo keep a chain of their own (`keeper`). A record names the job, step,
addressed silo and request id, what the keeper decided (one of DECISIONS) and why, and carries the
signed request and reply themselves, so that `verify_chain` can check their signatures against a
roster long after the job. A record's `hash` is the sha256 of its canonical JSON without that key, and
its `prev` is the hash of the record before ("0" * 64 for the first): a record changed, inserted or
removed in the middle breaks the chain at its position.

What the file alone cannot show: records cut off its end (a truncated tail is a shorter chain that is
still valid), or a chain rewritten and rehashed whole by whoever holds the file. The outside witness is
another copy: the coordinator logs its chain to MLflow at the end of each job (`AuditTrail.export`),
and a silo's chain can be compared with the coordinator's records for that silo.

Appends are safe across processes: each takes an exclusive lock on the file, reads the last record
and writes one whole line.
"""

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedsilo.errors import SignatureError, TrustError
from fedsilo.trust.envelope import digest, signer_of, verify
from fedsilo.trust.identity import COORDINATOR
from fedsilo.trust.roster import Roster, load_roster

DECISIONS = (
    "served",  # the silo did the step
    "declined",  # the silo said no under its policy or privacy budget; the reason names the rule
    "refused",  # the request or reply failed a check (signature, address, expiry, replay)
    "failed",  # the step raised
    "accepted",  # the coordinator accepted a silo's reply
    "absent",  # the coordinator got no reply
)
GENESIS = "0" * 64  # the `prev` of a chain's first record
MAX_REASON = 500
FIELDS = (
    "seq", "when", "keeper", "job", "step", "silo", "request", "request_sha256", "signed_by",
    "reply_sha256", "decision", "reason", "request_jws", "reply_jws", "prev", "hash",
)  # fmt: skip
_TAIL_BLOCK = 1 << 16


def record_hash(record: dict[str, Any]) -> str:
    """sha256 hex of a record's canonical JSON without its own `hash` key."""
    return digest({key: value for key, value in record.items() if key != "hash"})


class AuditTrail:
    """The append-only chain one party (`keeper`) keeps: a JSON-lines file, or a list in memory when
    `path` is None. Opening an existing file continues its chain."""

    def __init__(self, path: Path | str | None, keeper: str):
        self.path = Path(path) if path is not None else None
        self.keeper = keeper
        self._memory: list[dict[str, Any]] = []
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with self._locked() as descriptor:
                _tail(descriptor, self.path)  # a file that does not end in a whole record fails now

    def append(
        self, *, job: str, step: str, silo: str, request: str, decision: str, reason: str = "",
        request_jws: str = "", reply_jws: str = "", signed_by: str = "",
    ) -> dict[str, Any]:  # fmt: skip
        """Add one record and return it. `silo` is the addressed silo, `request` the request id;
        `signed_by` defaults to the signer the request's header names."""
        if decision not in DECISIONS:
            raise ValueError(f"decision {decision!r} is not one of {', '.join(DECISIONS)}")
        entry = {
            "keeper": self.keeper, "job": job, "step": step, "silo": silo, "request": request,
            "request_sha256": digest(request_jws) if request_jws else "",
            "signed_by": signed_by or _signer(request_jws),
            "reply_sha256": digest(reply_jws) if reply_jws else "",
            "decision": decision, "reason": reason[:MAX_REASON],
            "request_jws": request_jws, "reply_jws": reply_jws,
        }  # fmt: skip
        if self.path is None:
            record = _chained(entry, self._memory[-1] if self._memory else None)
            self._memory.append(record)
            return record
        with self._locked() as descriptor:
            record = _chained(entry, _tail(descriptor, self.path))
            _write_line(descriptor, record)
        return record

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every record, oldest first; TrustError naming the line when the file holds one that is not."""
        if self.path is None:
            return list(self._memory)
        records = []
        for position, parsed in _read_lines(self.path):
            if isinstance(parsed, str):
                raise TrustError(f"{self.path} line {position}: {parsed} (`fedsilo audit verify` it)")
            records.append(parsed)
        return records

    def export(self, path: Path | str) -> Path:
        """Write the whole chain as JSON lines to `path` (mode 0600): the copy the coordinator logs."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.writelines(_line(record) for record in self.records)
        return path

    @contextmanager
    def _locked(self) -> Iterator[int]:
        """The file open for appending (made mode 0600 when missing) under an exclusive lock."""
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield descriptor
        finally:
            os.close(descriptor)  # closing releases the lock


def _signer(request_jws: str) -> str:
    try:
        return signer_of(request_jws) if request_jws else ""
    except SignatureError:
        return ""  # not a JWS at all: still recorded (as refused), signed by no one


def _chained(entry: dict[str, Any], last: dict[str, Any] | None) -> dict[str, Any]:
    when = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    seq = last["seq"] + 1 if last else 1
    record = {"seq": seq, "when": when, **entry, "prev": last["hash"] if last else GENESIS}
    record["hash"] = record_hash(record)
    return record


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":")) + "\n"


def _write_line(descriptor: int, record: dict[str, Any]) -> None:
    data = _line(record).encode()
    while data:
        data = data[os.write(descriptor, data) :]
    os.fsync(descriptor)


def _tail(descriptor: int, path: Path) -> dict[str, Any] | None:
    """The last record of the file open at `descriptor` (None when it is empty), read backwards from
    its end; TrustError when the file does not end in a whole record."""
    end = os.lseek(descriptor, 0, os.SEEK_END)
    if end == 0:
        return None
    data, start = b"", end
    while start > 0 and b"\n" not in data[:-1]:
        size = min(_TAIL_BLOCK, start)
        start -= size
        data = os.pread(descriptor, size, start) + data
    last = data[:-1].rsplit(b"\n", 1)[-1]
    try:
        if not data.endswith(b"\n"):
            raise ValueError("a write was cut off")
        record = json.loads(last)
        if not isinstance(record["seq"], int) or not isinstance(record["hash"], str):
            raise ValueError("seq or hash is missing")
    except (ValueError, KeyError, TypeError) as exc:
        raise TrustError(
            f"{path} does not end in a whole audit record ({exc}); nothing more is appended to it: "
            f"check it with `fedsilo audit verify {path}` and keep it as evidence"
        ) from exc
    return record


def _read_lines(path: Path) -> list[tuple[int, dict[str, Any] | str]]:
    """Each line of the chain at `path` with its 1-based position: the record, or what is wrong with
    the line. TrustError naming the file when there is none."""
    if not path.is_file():
        raise TrustError(f"no audit trail at {path}")
    with path.open("rb") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH)  # no half-written line from an append under way
        text = handle.read().decode("utf-8", errors="replace")
    lines = text.split("\n")
    cut = lines[-1] != ""  # text after the last newline: a line whose write was cut off
    if not cut:
        lines.pop()
    parsed: list[tuple[int, dict[str, Any] | str]] = []
    for position, line in enumerate(lines, start=1):
        try:
            value = json.loads(line)
        except ValueError:
            value = None
        parsed.append((position, value if isinstance(value, dict) else "the line is not a JSON object"))
    if cut:
        parsed.append((len(lines), "the last line has no newline: a write was cut off"))
    return parsed


@dataclass
class ChainReport:
    """What `verify_chain` found: the records read, their line positions, and each problem as
    (1-based line position, message)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_chain(path: Path | str, roster: Roster | None = None) -> ChainReport:
    """Check the chain at `path`: each line a record with every field, seq 1, 2, 3... without gaps,
    each hash recomputed, each prev linked. With a roster, also each carried request's signature
    (the coordinator's key) and reply's (the addressed silo's key). TrustError when there is no file."""
    report = ChainReport()
    before: dict[str, Any] | None = {"seq": 0, "hash": GENESIS}  # None after a line that is no record
    for position, parsed in _read_lines(Path(path)):
        if isinstance(parsed, str):
            report.problems.append((position, parsed))
            before = None
            continue
        report.records.append(parsed)
        report.positions.append(position)
        messages = _field_problems(parsed) + _link_problems(parsed, before) + _token_problems(parsed, roster)
        report.problems += [(position, message) for message in messages]
        before = parsed
    return report


def _field_problems(record: dict[str, Any]) -> list[str]:
    problems = []
    missing = [name for name in FIELDS if name not in record]
    if missing:
        problems.append(f"lacks field(s) {', '.join(missing)}")
    if "decision" in record and record["decision"] not in DECISIONS:
        problems.append(f"decision {record['decision']!r} is not one of {', '.join(DECISIONS)}")
    return problems


def _link_problems(record: dict[str, Any], before: dict[str, Any] | None) -> list[str]:
    """What is wrong with a record's own hash and its links to `before` (the record on the line
    before; seq 0 at the start; None when that line was no record, so links cannot be checked)."""
    problems = []
    if record.get("hash") != record_hash(record):
        problems.append("its hash does not match its contents: the record was changed")
    if before is None:
        return problems
    previous, seq = before.get("seq"), record.get("seq")
    if not isinstance(seq, int):
        problems.append(f"seq {seq!r} is not a number")
    elif isinstance(previous, int) and seq <= previous:
        problems.append(f"seq {seq} repeats or runs backwards after {previous}")
    elif isinstance(previous, int) and seq > previous + 1:
        gone = f"record {seq - 1} is" if seq == previous + 2 else f"records {previous + 1} to {seq - 1} are"
        problems.append(f"{gone} missing: seq jumps from {previous} to {seq}")
    if record.get("prev") != before.get("hash"):
        which = "the chain's start (64 zeros)" if previous == 0 else f"the record before (seq {previous})"
        problems.append(
            f"prev does not match the hash of {which}: one of the two was changed, or records between "
            "them were removed"
        )
    return problems


def _token_problems(record: dict[str, Any], roster: Roster | None) -> list[str]:
    """Whether the request and reply a record carries match their digests and, with a roster, were
    signed by the coordinator and the addressed silo. A refused record's tokens are not checked for
    signatures: that a check failed is what the record says."""
    problems = []
    for part in ("request", "reply"):
        token = record.get(f"{part}_jws")
        if token and digest(token) != record.get(f"{part}_sha256"):
            problems.append(f"{part}_sha256 does not match the {part} the record carries")
    if roster is None or record.get("decision") == "refused":
        return problems
    silo = str(record.get("silo", ""))
    keys: list[tuple[str, str, Callable[[], str]]] = [
        ("request", COORDINATOR, roster.coordinator_key),
        ("reply", silo, lambda: roster.silo_key(silo)),
    ]
    for part, whose, key in keys:
        token = record.get(f"{part}_jws")
        if token:
            try:
                verify(token, key(), whose)
            except TrustError as exc:  # SignatureError, or a key the roster does not hold
                problems.append(f"{part}: {exc}")
    return problems


# (name, widest cell) of each column of format_table
COLUMNS = (
    ("#", 5), ("when", 19), ("keeper", 16), ("job", 24), ("step", 14), ("silo", 16), ("signed_by", 16),
    ("decision", 8), ("reason", 48),
)  # fmt: skip


def format_table(report: ChainReport) -> str:
    """The records as a fixed-width table, then one line per problem, then the verdict."""
    positions = report.positions if len(report.positions) == len(report.records) else None
    rows = [[name for name, _ in COLUMNS]]
    for index, record in enumerate(report.records):
        when = str(record.get("when", ""))[:19].replace("T", " ")
        values = [positions[index] if positions else index + 1, when]
        values += [record.get(name, "") for name, _ in COLUMNS[2:]]
        rows.append([_shorten(str(value), width) for value, (_, width) in zip(values, COLUMNS)])
    widths = [max(len(row[column]) for row in rows) for column in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines += [f"record {position}: {message}" for position, message in report.problems]
    count = len(report.records)
    if report.ok:
        lines.append(f"chain OK: {count} records")
    else:
        lines.append(f"chain BROKEN: {len(report.problems)} problem(s) in {count} records")
    return "\n".join(lines)


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def verify_command(path: str, roster_path: str | None = None) -> int:
    """`fedsilo audit verify FILE [--roster FILE]`: print the table and return 0 when the chain holds,
    1 when it does not. TrustError naming the file when there is none."""
    report = verify_chain(path, load_roster(roster_path) if roster_path else None)
    print(format_table(report))
    return 0 if report.ok else 1
