"""Secure aggregation's secret sharing: every silo's secrets split among its peers, sealed so that
only the peer each share is for can read it.

At the share step each silo splits two secrets among the round's peers with Shamir's scheme
(pycryptodome's `Crypto.Protocol.SecretSharing.Shamir`, 16-byte secrets) and threshold t:
- its self-mask seed b (16 bytes), which the survivors' shares rebuild to remove its self mask;
- its masking key's private half (32 bytes, as two 16-byte halves shared alike), which the
  survivors' shares rebuild when it drops out, to remove its pairwise masks.
Peer i (1-based in the sorted peer list) gets share i of each: 48 bytes, sealed with
ChaCha20-Poly1305 under a key only the sender and that peer derive (X25519 of their share keys,
HKDF bound to the round's view digest), the digest, sender and receiver as associated data. The
coordinator relays the sealed bundles and never reads a share; a peer given another view of the
round (other peers, encoding or threshold) cannot open them, so it refuses to mask.
"""

import hashlib
import json
import os
from dataclasses import asdict, dataclass

from Crypto.Protocol.SecretSharing import Shamir
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from fedsilo.privacy.secagg import Encoding, SecAggError, public_key_problem, shared_key

SEED_BYTES = 16
SHARE_BYTES = 3 * 16  # a share of the seed, then shares of the masking key's two halves
SEALED_BYTES = 12 + SHARE_BYTES + 16  # nonce, ciphertext, tag
_KEY_HEX = 64


def key_bundle(mask_public: str, share_public: str) -> str:
    """What a silo's fit reply carries as its `public_key`: its masking key, then its share key."""
    return mask_public + share_public


def keys_of(bundle: str) -> tuple[str, str]:
    """The masking and share public keys (hex) of a silo's key bundle (signed, or plain)."""
    if isinstance(bundle, str) and "." in bundle:
        from fedsilo.privacy.secagg_identity import bundle_text

        bundle = bundle_text(bundle)
    if not isinstance(bundle, str) or len(bundle) != 2 * _KEY_HEX:
        raise SecAggError("a key bundle is two X25519 public keys, 128 hex characters")
    return bundle[:_KEY_HEX], bundle[_KEY_HEX:]


def bundle_problem(bundle: str) -> str | None:
    """Why a silo's key bundle cannot be used, or None."""
    try:
        mask, share = keys_of(bundle)
    except SecAggError as exc:
        return f"unusable public key for secure aggregation: {exc}"
    if mask == share:
        return "unusable public key for secure aggregation: one key for masking and sharing"
    return public_key_problem(mask) or public_key_problem(share)


def default_threshold(peers: int) -> int:
    """Shares needed to rebuild a secret when the scenario sets none: a strict majority, at least 2."""
    return max(2, peers // 2 + 1)


def threshold_for(asked: int | None, peers: int) -> int:
    """The shares a round needs: what the scenario asks, never below a strict majority of the
    round's peers (below it, two halves of a round given different dropped lists would each
    rebuild one secret of the same silo: its seed and its masking key, and so its update)."""
    return max(asked or 0, default_threshold(peers))


def view_digest(round_index: int, job: str, peers: dict[str, str], encoding: Encoding, threshold: int) -> str:
    """sha256 of what every silo of a round must agree on; part of every key it derives."""
    view = {
        "round": round_index,
        "job": job,
        "peers": dict(sorted(peers.items())),
        "encoding": encoding.as_dict(),
        "threshold": threshold,
    }
    return hashlib.sha256(json.dumps(view, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class View:
    """What every silo of a round must agree on: the peers' key bundles, the encoding and the
    threshold. Its digest goes into every key a silo derives, so silos given different views
    cannot open each other's shares, and their masks would not cancel."""

    round_index: int
    job: str
    peers: dict[str, str]  # silo -> key bundle
    encoding: Encoding
    threshold: int

    @property
    def digest(self) -> str:
        return view_digest(self.round_index, self.job, self.peers, self.encoding, self.threshold)

    def mask_key(self, silo: str) -> str:
        return keys_of(self.peers[silo])[0]

    def share_key(self, silo: str) -> str:
        return keys_of(self.peers[silo])[1]

    def index(self, silo: str) -> int:
        """The silo's Shamir index: its place in the sorted peer list, from 1."""
        return sorted(self.peers).index(silo) + 1

    def as_record(self) -> dict:
        return asdict(self)

    @classmethod
    def of_record(cls, record: dict) -> "View":
        return cls(**(record | {"encoding": Encoding.of(record["encoding"])}))


def seed_digest(seed: bytes) -> str:
    """What a silo publishes of its seed, so the coordinator can check the one its peers rebuild."""
    return hashlib.sha256(b"fedsilo-secagg-seed|" + seed).hexdigest()


def split(seed: bytes, mask_private: bytes, threshold: int, count: int) -> list[bytes]:
    """`count` shares (48 bytes each; share i is for the peer of index i + 1) of the seed and the
    masking key, any `threshold` of which rebuild each."""
    if len(seed) != SEED_BYTES or len(mask_private) != 32:
        raise SecAggError("a seed is 16 bytes and a masking key 32")
    parts = [
        Shamir.split(threshold, count, secret) for secret in (seed, mask_private[:16], mask_private[16:])
    ]
    return [b"".join(part[i][1] for part in parts) for i in range(count)]


def _box(private: bytes, peer_public: str, digest: str, sender: str, receiver: str):
    names = f"{digest}|{sender}|{receiver}".encode()
    return ChaCha20Poly1305(shared_key(private, peer_public, b"fedsilo-secagg-share|" + names)), names


def seal(
    private: bytes, receiver_public: str, digest: str, sender: str, receiver: str, plain: bytes
) -> bytes:
    """A share from `sender` for `receiver` (share keys), readable only by the receiver."""
    box, associated = _box(private, receiver_public, digest, sender, receiver)
    nonce = os.urandom(12)
    return nonce + box.encrypt(nonce, plain, associated)


def unseal(
    private: bytes, sender_public: str, digest: str, sender: str, receiver: str, sealed: bytes
) -> bytes:
    """The share `sender` sealed for `receiver`; SecAggError when it does not authenticate (another
    view of the round, or a forged bundle)."""
    box, associated = _box(private, sender_public, digest, sender, receiver)
    try:
        plain = box.decrypt(sealed[:12], sealed[12:], associated)
    except InvalidTag:
        raise SecAggError(f"the share from {sender} does not authenticate under this view") from None
    if len(plain) != SHARE_BYTES:
        raise SecAggError(f"the share from {sender} is not {SHARE_BYTES} bytes")
    return plain


def combine(shares: dict[int, bytes]) -> bytes:
    """The secret (16 or 32 bytes) rebuilt from shares by peer index (1-based)."""
    lengths = {len(share) for share in shares.values()}
    if lengths not in ({16}, {32}):
        raise SecAggError("shares must all be 16 or all 32 bytes")
    halves = [[(index, share[i : i + 16]) for index, share in sorted(shares.items())] for i in (0, 16)]
    return b"".join(Shamir.combine(half) for half in halves[: lengths.pop() // 16])
