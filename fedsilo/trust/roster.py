"""The federation roster: who may take part, by public key. The coordinator's operator keeps it
(`fedsilo roster add NAME PUBLIC_KEY`), and each silo holds a copy (`fedsilo worker --roster FILE`)
to pin the coordinator's key and check its peers' keys under secure aggregation.

    coordinator: <public key>          # the coordinator's (fedsilo keys init --coordinator)
    silos:
      hospital-a:
        public_key: <public key>       # the silo's (fedsilo keys show --state ...)
        max_examples: 5000             # optional: the most training examples it may claim
        contact: it-security@hospital-a.example

Rotating a key is `roster add NAME NEWKEY --replace`; revoking one is `roster remove NAME`. A roster
is public: it holds no secret.
"""

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fedsilo.errors import TrustError
from fedsilo.trust.identity import parse_public_key, public_text

ROSTER_ENV = "FEDSILO_ROSTER"


class RosterEntry(BaseModel):
    """One enrolled silo."""

    model_config = ConfigDict(extra="forbid")
    public_key: str
    max_examples: int | None = Field(default=None, gt=0)
    contact: str = ""

    @field_validator("public_key")
    @classmethod
    def _is_key(cls, value: str) -> str:
        return public_text(parse_public_key(value))  # one spelling, so keys compare as text


class Roster(BaseModel):
    """The coordinator's public key and each enrolled silo's."""

    model_config = ConfigDict(extra="forbid")
    coordinator: str | None = None
    silos: dict[str, RosterEntry] = Field(default_factory=dict)

    @field_validator("coordinator")
    @classmethod
    def _coordinator_key(cls, value: str | None) -> str | None:
        if value is not None:
            return public_text(parse_public_key(value, "the coordinator's public key"))
        return value

    def silo_key(self, silo: str) -> str:
        """The silo's public key; TrustError naming the command that enrols it when it has none."""
        entry = self.silos.get(silo)
        if entry is None:
            raise TrustError(
                f"silo {silo} is not in the roster: enrol it with `fedsilo roster add {silo} PUBLIC_KEY`"
            )
        return entry.public_key

    def coordinator_key(self) -> str:
        if not self.coordinator:
            raise TrustError(
                "the roster names no coordinator key: run `fedsilo keys init --coordinator --roster FILE`"
            )
        return self.coordinator

    def max_examples(self, silo: str) -> int | None:
        entry = self.silos.get(silo)
        return entry.max_examples if entry else None


def roster_path(given: str | Path | None = None) -> Path:
    """The roster file: the one given, FEDSILO_ROSTER, or .fedsilo/roster.yaml."""
    return Path(given or os.environ.get(ROSTER_ENV, ".fedsilo/roster.yaml"))


def load_roster(path: str | Path | None = None, must_exist: bool = True) -> Roster:
    """The roster at `path` (see roster_path); TrustError naming the file and what is wrong."""
    path = roster_path(path)
    if not path.exists():
        if must_exist:
            raise TrustError(
                f"no roster at {path}: make one with `fedsilo keys init --coordinator --roster {path}` "
                f"and `fedsilo roster add SILO PUBLIC_KEY --roster {path}`"
            )
        return Roster()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return Roster.model_validate(raw)
    except (yaml.YAMLError, ValidationError, TrustError) as exc:
        raise TrustError(f"{path}: not a readable roster: {str(exc)[:500]}") from exc


def save_roster(roster: Roster, path: str | Path | None = None) -> Path:
    """Write `roster` to `path` whole (a temporary file renamed into place)."""
    path = roster_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(yaml.safe_dump(roster.model_dump(exclude_none=True), sort_keys=False))
    temporary.replace(path)
    return path


def enrol(
    roster: Roster, silo: str, public_key: str, replace: bool = False, max_examples: int | None = None,
    contact: str = "",
) -> Roster:  # fmt: skip
    """The roster with `silo` enrolled; a silo already there keeps its key unless `replace`."""
    try:
        entry = RosterEntry(public_key=public_key, max_examples=max_examples, contact=contact)
    except ValidationError as exc:
        raise TrustError(f"silo {silo}: {exc.errors()[0]['msg']}") from exc
    if silo in roster.silos and not replace and roster.silos[silo].public_key != entry.public_key:
        raise TrustError(f"silo {silo} is enrolled with another key; pass --replace to rotate it")
    return roster.model_copy(update={"silos": roster.silos | {silo: entry}})


def revoke(roster: Roster, silo: str) -> Roster:
    if silo not in roster.silos:
        raise TrustError(f"silo {silo} is not in the roster; enrolled: {', '.join(sorted(roster.silos))}")
    return roster.model_copy(update={"silos": {k: v for k, v in roster.silos.items() if k != silo}})
