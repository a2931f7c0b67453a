"""A silo's DP-SGD budget, kept on its own disk across jobs, restarts and replays.

The round number a coordinator sends is not evidence of what a silo has already spent: asking
round 1 twice, round 0, or a second job on the same rows would each train uncounted. So the silo
records every training it does in a ledger in its private state folder
(`FEDSILO_SILO_STATE/<silo>/dp-ledger.json`, mode 0600) and spends from it, whatever the request
says. A budget is kept per set of rows (`rows_version`: the silo's rows keyed by its own secret,
whatever scenario, seed or test split a request names, so no coordinator can start a fresh budget
on the same records by renaming the job or changing its split). Its delta is fixed by its first
charge: epsilons at different deltas do not compose into one (epsilon, delta) statement, so a
charge at another delta for the same budget is declined.

A budget's epsilon composes all its charges with Opacus's RDP accountant (history entries of
(sigma, q, steps)), plus the release of the silo's noised training count once per draw (a count
is drawn once per split of the rows and noise level, fedsilo.silo.stated_count; each draw is a
release). Writers take an fcntl lock and replace the file atomically, so concurrent fits (threads
or processes) each see the others' reservations; a ledger that cannot be read or written declines
the fit.
"""

import fcntl
import json
import os
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from fedsilo.errors import PrivacyBudgetExhausted, SiloDeclined
from fedsilo.privacy.accounting import composed
from fedsilo.privacy.pending import state_folder

LEDGER_FILE = "dp-ledger.json"
FORMAT = 1
NEW_BUDGET = "new rows or a higher privacy.dp.target_epsilon is what allows more training"


@dataclass(frozen=True)
class BudgetKey:
    """One budget: the silo's rows (`rows_version`, independent of the split), at `delta`."""

    rows: str
    delta: float

    @property
    def name(self) -> str:
        return self.rows


@dataclass(frozen=True)
class Charge:
    """One fit's DP-SGD steps: what the accountant needs (sigma, q, steps, the count's noise) and
    what a reader of the ledger needs (job, round, when: UTC, set when it is reserved)."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    count_noise: float | None = None
    count_draw: str = ""  # which noised count the fit used (its split's data version)
    job: str = ""
    round: int = 0
    when: str = ""


def composed_epsilon(charges: Iterable[Charge], delta: float) -> float:
    """epsilon at `delta` of all `charges` composed (RDP orders add), with the noised count's release
    counted once per distinct draw; charges of equal (sigma, q) are merged into one entry."""
    steps: dict[tuple[float, float], int] = {}
    counts: dict[tuple[float, str], float] = {}
    for charge in charges:
        if charge.steps > 0:
            rate = (charge.noise_multiplier, charge.sample_rate)
            steps[rate] = steps.get(rate, 0) + charge.steps
        if charge.count_noise:
            counts[(charge.count_noise, charge.count_draw)] = charge.count_noise
    history = [(sigma, q, n) for (sigma, q), n in steps.items()] + [(c, 1.0, 1) for c in counts.values()]
    return composed(history, delta)


@dataclass(frozen=True)
class Reservation:
    """A charge in the ledger, counted from the moment it was made; `epsilon` is the budget's total
    with it (and with every other charge at that moment)."""

    ledger: "BudgetLedger"
    key: BudgetKey
    charge_id: str
    epsilon: float

    def cancel(self) -> None:
        """Give the charge back: only for a training that failed before anything left the silo."""
        self.ledger.remove(self.key, self.charge_id)


class BudgetLedger:
    """The silo's DP-SGD charges by budget, in one JSON file guarded by an fcntl lock."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    @classmethod
    def for_silo(cls, silo: str) -> "BudgetLedger":
        """The ledger in `silo`'s private state folder."""
        return cls(state_folder(silo) / LEDGER_FILE)

    def charges(self, key: BudgetKey) -> list[Charge]:
        """Every charge of `key`'s budget, oldest first."""
        with self._locked() as content:
            return _charges(content, key)

    def spent(self, key: BudgetKey) -> float:
        """epsilon (at `key.delta`) of everything charged to `key`'s budget."""
        return composed_epsilon(self.charges(key), key.delta)

    def reserve(self, key: BudgetKey, charge: Charge, target: float | None) -> Reservation:
        """Charge `charge` to `key`'s budget, unless that would take it past `target` (None: no
        budget, only counted): PrivacyBudgetExhausted then, with the epsilon spent so far as
        `.spent`. A charge at another delta than the budget's is declined (SiloDeclined)."""
        with self._locked() as content:
            entry = content["budgets"].setdefault(key.name, _new_entry(key))
            if entry["charges"] and entry["delta"] != key.delta:
                raise SiloDeclined(
                    f"the privacy ledger {self.path} holds these rows at delta "
                    f"{entry['delta']:g}; epsilons at another delta ({key.delta:g}) do not compose with it, "
                    f"so this silo does not train; use privacy.dp.delta {entry['delta']:g} or new data"
                )
            before = composed_epsilon(_charges(content, key), key.delta)
            stamped = replace(charge, when=datetime.now(UTC).isoformat(timespec="seconds"))
            after = composed_epsilon([*_charges(content, key), stamped], key.delta)
            if target is not None and after > target:
                error = PrivacyBudgetExhausted(
                    f"round {charge.round} would take epsilon to {after:.3f} > privacy.dp.target_epsilon "
                    f"{target:g} (spent so far on these rows: {before:.3f}, ledger "
                    f"{self.path}); this silo stops training: {NEW_BUDGET}"
                )
                error.spent = before
                raise error
            charge_id = secrets.token_hex(8)
            entry["delta"] = key.delta
            entry["charges"].append(asdict(stamped) | {"id": charge_id})
            self._write(content)
        return Reservation(self, key, charge_id, after)

    def remove(self, key: BudgetKey, charge_id: str) -> None:
        """Take the charge `charge_id` out of `key`'s budget (no change when it is not there)."""
        with self._locked() as content:
            entry = content["budgets"].get(key.name, _new_entry(key))
            kept = [c for c in entry["charges"] if c["id"] != charge_id]
            if len(kept) != len(entry["charges"]):
                entry["charges"] = kept
                self._write(content)

    @contextmanager
    def _locked(self) -> Iterator[dict]:
        """The ledger's content, read under an exclusive lock held until the block ends. A ledger
        that cannot be locked or read declines (SiloDeclined): never train uncounted."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            lock = os.open(self.path.with_name(f".{self.path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise self._unusable("cannot be locked", exc) from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield self._read()
        finally:
            os.close(lock)  # closing releases the lock

    def _read(self) -> dict:
        try:
            content = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"format": FORMAT, "budgets": {}}
        except (OSError, ValueError) as exc:
            raise self._unusable("cannot be read (repair or move it)", exc) from None
        if not isinstance(content, dict) or content.get("format") != FORMAT:
            raise self._unusable("is not a fedsilo DP ledger (repair or move it)", None)
        return content

    def _write(self, content: dict) -> None:
        """Replace the ledger atomically (a temporary file, fsynced, then renamed; mode 0600)."""
        temporary = self.path.with_name(f".{self.path.name}.{secrets.token_hex(8)}")
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                json.dump(content, handle, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise self._unusable("cannot be written", exc) from None

    def _unusable(self, what: str, cause: Exception | None) -> SiloDeclined:
        reason = f": {cause}" if cause else ""
        return SiloDeclined(
            f"the privacy ledger {self.path} {what}{reason}; this silo does not train uncounted"
        )


def _new_entry(key: BudgetKey) -> dict:
    return {"rows": key.rows, "delta": key.delta, "charges": []}


def _charges(content: dict, key: BudgetKey) -> list[Charge]:
    entry = content["budgets"].get(key.name, _new_entry(key))
    return [Charge(**{k: v for k, v in c.items() if k != "id"}) for c in entry["charges"]]


def charge_count_release(silo: str, rows: str, draw: str, dp) -> None:
    """Charge the release of a noised training count drawn for the split `draw` of the silo's
    `rows` (once per draw: every later report repeats it), before it is released; declines
    (PrivacyBudgetExhausted) when the budget cannot pay for it. Every split a coordinator asks
    for draws a new count, so asking many is paid for, not free."""
    if not dp.count_noise:
        return
    ledger, key = BudgetLedger.for_silo(silo), BudgetKey(rows, dp.delta)
    if any(charge.count_draw == draw for charge in ledger.charges(key)):
        return
    release = Charge(0.0, 0.0, 0, dp.count_noise, count_draw=draw, job="count release")
    ledger.reserve(key, release, dp.target_epsilon)
