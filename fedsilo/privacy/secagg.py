"""Secure aggregation with pairwise masks (Bonawitz et al. 2017, without the secret sharing).

Each silo turns its update into one vector of integers modulo 2^32:

    the floating tensors' change from the global model, each coordinate clipped to
    [-clipping_range, clipping_range], times the silo's weight w_k (its example count, or 1 under
    central DP), in fixed point with `scale = 2^30 / (clipping_range * weight_bound)`, followed
    by w_k itself,

and adds, for every other silo j of the round, +mask_kj if k sorts before j and -mask_kj after.
mask_kj is ChaCha20's key stream under a key both silos derive from an X25519 exchange (HKDF-SHA256
of the shared secret, bound to the round and attempt); the public keys travel through the
coordinator. In the sum over all silos of one attempt the masks cancel, and the coordinator reads
sum_k w_k delta_k and sum_k w_k, never one silo's. `weight_bound` (the sum of every silo's
training count) keeps the sum inside the ring, so the only loss is rounding: each coordinate of
the averaged update is off by at most K * clipping_range / 2^31 for K silos.

Crypto comes from the `cryptography` package (X25519, HKDF, ChaCha20); nothing here invents any.
"""

from dataclasses import dataclass

import numpy as np
import torch
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedsilo.errors import ReplyRefused
from fedsilo.weights import State

MODULUS = 2**32
SCALE_BITS = 30  # the honest sum uses at most 2^30 of the 2^31 signed range: room to spare
_RAW = serialization.Encoding.Raw


class SecAggError(ReplyRefused):
    """Secure aggregation cannot go on (a bad key, a sum that fails its checks); says why."""


# -- keys ------------------------------------------------------------------------------------------


def new_private_key() -> bytes:
    """A fresh X25519 private key (32 raw bytes); a silo makes one per round and keeps it."""
    return X25519PrivateKey.generate().private_bytes(
        _RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def public_key(private: bytes) -> str:
    """The public half of a private key, as hex, for the coordinator to pass on."""
    key = X25519PrivateKey.from_private_bytes(private).public_key()
    return key.public_bytes(_RAW, serialization.PublicFormat.Raw).hex()


def public_key_problem(peer_public: str) -> str | None:
    """Why a silo's public key cannot be used, or None. Checked by the coordinator before the key
    list goes out: one unusable key would otherwise fail every other silo's masking step."""
    try:
        peer = X25519PublicKey.from_public_bytes(bytes.fromhex(peer_public))
        X25519PrivateKey.generate().exchange(peer)  # refuses low-order points
    except (ValueError, TypeError) as exc:
        return f"unusable public key for secure aggregation: {exc}"
    return None


def _pair_key(private: bytes, peer_public: str, context: bytes) -> bytes:
    try:
        peer = X25519PublicKey.from_public_bytes(bytes.fromhex(peer_public))
        shared = X25519PrivateKey.from_private_bytes(private).exchange(peer)
    except ValueError as exc:  # not hex, wrong length, or a low-order point
        raise SecAggError(f"unusable public key: {exc}") from None
    return HKDF(hashes.SHA256(), length=32, salt=None, info=b"fedsilo-secagg|" + context).derive(shared)


def _key_stream(key: bytes, length: int) -> np.ndarray:
    """`length` pseudo-random uint32 values: ChaCha20 encrypting zeros (one key per pair and context)."""
    encryptor = Cipher(algorithms.ChaCha20(key, b"\x00" * 16), mode=None).encryptor()
    return np.frombuffer(encryptor.update(bytes(4 * length)), dtype="<u4")


def pair_masks(private: bytes, me: str, peers: dict[str, str], context: bytes, length: int) -> np.ndarray:
    """The sum of this silo's signed masks with every peer (name -> public key), modulo 2^32."""
    total = np.zeros(length, dtype=np.uint32)
    for name, peer_public in sorted(peers.items()):
        if name == me:
            continue
        ordered = b"|".join(sorted((me.encode(), name.encode())))
        stream = _key_stream(_pair_key(private, peer_public, context + b"|" + ordered), length)
        if me < name:
            total += stream  # uint32 arithmetic wraps: exactly modulo 2^32
        else:
            total -= stream
    return total


# -- the silo's vector -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoding:
    """How an update becomes a ring vector; the coordinator sends the same one to every silo."""

    clipping_range: float
    weight_bound: int  # an upper bound of sum_k w_k over the round

    @property
    def scale(self) -> float:
        return 2.0**SCALE_BITS / (self.clipping_range * self.weight_bound)


def float_names(state: State) -> list[str]:
    """The tensors that are averaged, in a fixed order (integer buffers keep the global value)."""
    return sorted(name for name, tensor in state.items() if tensor.is_floating_point())


def encode(local: State, current: State, weight: int, encoding: Encoding) -> tuple[np.ndarray, int]:
    """The silo's weighted, clipped, fixed-point update as uint32 (the weight last), and how many
    coordinates were clipped."""
    if not 0 < weight <= encoding.weight_bound:
        raise SecAggError(f"weight {weight} is outside (0, {encoding.weight_bound}]")
    names = float_names(current)
    delta = torch.cat([(local[n].double() - current[n].double()).flatten() for n in names])
    bound = encoding.clipping_range
    clipped = int((delta.abs() > bound).sum())
    fixed = torch.round(delta.clamp_(-bound, bound).mul_(weight * encoding.scale)).to(torch.int64)
    vector = np.empty(fixed.numel() + 1, dtype=np.uint32)
    vector[:-1] = fixed.numpy().astype(np.uint32)  # two's complement: exactly x modulo 2^32
    vector[-1] = weight
    return vector, clipped


def mask(vector: np.ndarray, masks: np.ndarray) -> np.ndarray:
    return vector + masks  # uint32: modulo 2^32


def unmask_sum(vectors: list[np.ndarray]) -> np.ndarray:
    """The sum of the masked vectors of one attempt, as signed integers (the masks cancelled)."""
    total = np.zeros_like(vectors[0], dtype=np.uint32)
    for vector in vectors:
        total += vector
    return total.view(np.int32)  # read modulo 2^32 as a value in [-2^31, 2^31)


def decode_sum(signed: np.ndarray, current: State, encoding: Encoding, max_weight: int) -> tuple[State, int]:
    """sum_k w_k delta_k as tensors shaped like the current model's, and sum_k w_k.

    A sum no honest set of silos could produce (weights outside (0, max_weight], a coordinate past
    the clipping range) is refused: a silo can hide a bad update under the masks, not its effect.
    """
    total_weight = int(signed[-1])
    if not 0 < total_weight <= max_weight:
        raise SecAggError(f"the unmasked total weight {total_weight} is outside (0, {max_weight}]")
    values = torch.from_numpy(signed[:-1]).double().div_(encoding.scale)
    if values.numel() and float(values.abs().max()) > encoding.clipping_range * total_weight * (1 + 1e-9):
        raise SecAggError("a coordinate of the unmasked sum lies outside the clipping range")
    sums, offset = {}, 0
    for name in float_names(current):
        size = current[name].numel()
        sums[name] = values[offset : offset + size].view(current[name].shape)
        offset += size
    if offset != values.numel():
        raise SecAggError(f"the sum has {values.numel()} values; the model has {offset}")
    return sums, total_weight


def rounding_bound(silos: int, encoding: Encoding, total_weight: int) -> float:
    """The largest error fixed point adds to one coordinate of the averaged update: half a step
    per silo, over the total weight (K * clipping_range / 2^31 when every silo answered)."""
    return silos / (2 * encoding.scale * total_weight)
