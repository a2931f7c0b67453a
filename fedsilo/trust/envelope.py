"""Signed messages as JWS compact serialization (RFC 7515), alg Ed25519 (RFC 9864), via joserfc.

The payload is the claims as JSON; the protected header names the signer (`kid`). Nothing here
decides what a message may say: the gate (silo side) and the signer (coordinator side) check the
claims once the signature holds.
"""

import hashlib
import json
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey
from joserfc.jws import JWSRegistry

from fedsilo.errors import SignatureError
from fedsilo.trust.identity import Identity, parse_public_key

ALGORITHM = "Ed25519"
MAX_TOKEN_BYTES = 4 * 1024 * 1024  # a step or reply is small records and URIs; a larger one is refused unread


def _registry() -> JWSRegistry:
    """Ed25519 only, and payloads up to MAX_TOKEN_BYTES (joserfc's default stops at 128 kB, below a
    confusion matrix of a few hundred labels)."""
    registry = JWSRegistry(algorithms=[ALGORITHM])
    registry.max_payload_length = MAX_TOKEN_BYTES
    return registry


def canonical(value: Any) -> bytes:
    """JSON with sorted keys and no spaces: the bytes digests are taken over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()


def digest(value: Any) -> str:
    """sha256 hex of a value's canonical JSON (or of the bytes/str given)."""
    if isinstance(value, str):
        value = value.encode()
    data = value if isinstance(value, bytes) else canonical(value)
    return hashlib.sha256(data).hexdigest()


def sign(identity: Identity, claims: dict[str, Any]) -> str:
    """`claims` signed by `identity`, as a compact JWS."""
    key = OKPKey.import_key(identity.private_key)
    header = {"alg": ALGORITHM, "kid": identity.name, "typ": "fedsilo+jws"}
    return jws.serialize_compact(header, canonical(claims), key, registry=_registry())


def signer_of(token: str) -> str:
    """The `kid` a token's header claims (unverified: only to pick the key to verify with)."""
    header, _ = _unverified(token)
    return str(header.get("kid", ""))[:100]


def verify(token: str, public_key: str, whose: str) -> dict[str, Any]:
    """The claims of `token` when it is signed by the holder of `public_key` (`whose` names them in
    the error); SignatureError otherwise, and for anything that is not a compact JWS."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_BYTES:
        raise SignatureError(f"not a signed message from {whose} (missing, or over {MAX_TOKEN_BYTES} bytes)")
    key = OKPKey.import_key(parse_public_key(public_key, f"{whose}'s public key"))
    try:
        message = jws.deserialize_compact(token, key, registry=_registry())
    except (JoseError, ValueError, TypeError, RecursionError) as exc:
        raise SignatureError(f"the signature is not {whose}'s ({type(exc).__name__})") from exc
    try:
        claims = json.loads(message.payload)
    except (ValueError, RecursionError) as exc:
        raise SignatureError(f"{whose}'s signed payload is not JSON") from exc
    if not isinstance(claims, dict):
        raise SignatureError(f"{whose}'s signed payload is not an object")
    return claims


def peek(token: str) -> dict[str, Any]:
    """A token's claims without checking its signature: for display only (audit tables)."""
    return _unverified(token)[1]


def _unverified(token: str) -> tuple[dict, dict]:
    """A token's header and claims, both JSON objects, unchecked; SignatureError for anything else."""
    import base64

    try:
        header, payload, _ = token.split(".")
        parts = [
            json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))) for part in (header, payload)
        ]
    except (ValueError, AttributeError, TypeError, RecursionError) as exc:
        raise SignatureError("not a compact JWS (three base64url parts of JSON)") from exc
    if not all(isinstance(part, dict) for part in parts):
        raise SignatureError("a compact JWS's header and payload are JSON objects")
    return parts[0], parts[1]
