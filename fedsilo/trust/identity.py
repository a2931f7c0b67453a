"""Ed25519 identities: a party's private key, made where it lives and never sent anywhere.

The key file is PEM (PKCS#8), mode 0600, in the party's own state folder: a silo's
(FEDSILO_SILO_STATE/<silo>) or the coordinator's (FEDSILO_COORDINATOR_STATE). Its public half is
written as the JWK `x` value (base64url of the 32 raw bytes), which is what a roster holds.
"""

import base64
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedsilo.errors import TrustError

KEY_FILE = "identity.key"
PREFIX = "ed25519:"
COORDINATOR = "coordinator"  # the coordinator's name in signed claims, rosters and audit trails
COORDINATOR_STATE_ENV = "FEDSILO_COORDINATOR_STATE"


@dataclass(frozen=True)
class Identity:
    """A named party and its private key."""

    name: str
    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls, name: str) -> "Identity":
        """A fresh key pair (embedded jobs make one per silo and job)."""
        return cls(name, Ed25519PrivateKey.generate())

    @property
    def public_key(self) -> str:
        """The public half as roster text."""
        return public_text(self.private_key.public_key())


def public_text(key: Ed25519PublicKey) -> str:
    """`ed25519:` and the 32 raw bytes in base64url (the prefix also keeps a key that would start
    with `-` from reading as a command-line option)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def parse_public_key(text: str, whose: str = "public key") -> Ed25519PublicKey:
    """Roster text back to a key; a clear TrustError naming `whose` when it is not one."""
    try:
        body = text.strip().removeprefix(PREFIX)
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, TypeError, AttributeError) as exc:
        raise TrustError(
            f"{whose} {str(text)[:60]!r} is not an Ed25519 public key (`ed25519:` and 43 base64url "
            "characters, as `fedsilo keys show` prints)"
        ) from exc


def key_path(folder: Path | str) -> Path:
    return Path(folder) / KEY_FILE


def load_identity(folder: Path | str, name: str) -> Identity:
    """The identity kept in `folder`; TrustError naming the file and `fedsilo keys init` when none."""
    path = key_path(folder)
    if not path.exists():
        raise TrustError(f"no identity key at {path}: make one with `fedsilo keys init --state {folder}`")
    if path.stat().st_mode & 0o077:
        raise TrustError(
            f"{path} can be read by others (mode {oct(path.stat().st_mode & 0o777)}); chmod 600 it"
        )
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError as exc:
        raise TrustError(f"{path} is not a PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise TrustError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return Identity(name, key)


def load_or_make(folder: Path | str, name: str) -> tuple[Identity, bool]:
    """The identity in `folder`, made there (mode 0600, folder 0700) when it has none; and whether
    it was made now. Two processes starting at once keep one key: the first link wins."""
    folder = Path(folder)
    path = key_path(folder)
    if path.exists():
        return load_identity(folder, name), False
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    temporary = folder / f".{KEY_FILE}.{os.getpid()}"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
    try:
        os.link(temporary, path)
        made = True
    except FileExistsError:
        made = False
    finally:
        temporary.unlink()
    return load_identity(folder, name), made


def coordinator_folder() -> Path:
    """Where the coordinator keeps its key: FEDSILO_COORDINATOR_STATE, default .fedsilo/coordinator."""
    return Path(os.environ.get(COORDINATOR_STATE_ENV, ".fedsilo/coordinator"))
