"""Secure aggregation's maths: fixed-point encoding and double masks (Bonawitz et al. 2017).

A silo's update becomes one vector of integers modulo 2^32: its change from the global model
(L2-clipped, then each coordinate clipped to +-clipping_range) as round(delta / clipping_range *
unit * w_k) with unit = 2^30 // weight_bound and w_k its weight, followed by w_k itself. It adds
a self mask (ChaCha20's stream under a key derived from a fresh 16-byte seed b_k) and, for every
other silo j, +mask_kj if k sorts before j and -mask_kj after (ChaCha20 under a key both derive
from X25519 and HKDF-SHA256, bound to the digest of the round's view). fedsilo.privacy.
secagg_shares shares the secrets behind the masks.

Pairwise masks cancel in the sum over every silo that masked; the coordinator removes the self
masks of the silos in the sum, and the pairwise masks of a silo that dropped out, with secrets the
survivors' shares rebuild, and reads sum_k w_k delta_k and sum_k w_k. Every check of the sum
compares integers (each coordinate lies within unit * sum_k w_k exactly), so no honest sum is
ever refused; the only loss is rounding, at most K * clipping_range / 2^31 per averaged coordinate.
Crypto comes from the `cryptography` package (X25519, HKDF, ChaCha20); nothing here invents any.
"""

import math
from dataclasses import asdict, dataclass

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
    """Secure aggregation cannot go on (a bad key, a view that differs, a sum that fails its
    checks); says why."""


# -- keys and masks --------------------------------------------------------------------------------


def new_private_key() -> bytes:
    """A fresh X25519 private key (32 raw bytes); a silo makes two per round and keeps them."""
    return X25519PrivateKey.generate().private_bytes(
        _RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def public_key(private: bytes) -> str:
    """The public half of a private key, as hex, for the coordinator to pass on."""
    key = X25519PrivateKey.from_private_bytes(private).public_key()
    return key.public_bytes(_RAW, serialization.PublicFormat.Raw).hex()


def public_key_problem(peer_public: str) -> str | None:
    """Why a public key cannot be used, or None: one unusable key would otherwise fail every
    other silo's step."""
    try:
        peer = X25519PublicKey.from_public_bytes(bytes.fromhex(peer_public))
        X25519PrivateKey.generate().exchange(peer)  # refuses low-order points
    except (ValueError, TypeError) as exc:
        return f"unusable public key for secure aggregation: {exc}"
    return None


def shared_key(private: bytes, peer_public: str, info: bytes) -> bytes:
    """32 bytes only this pair can derive: X25519, then HKDF-SHA256 bound to `info`."""
    try:
        peer = X25519PublicKey.from_public_bytes(bytes.fromhex(peer_public))
        shared = X25519PrivateKey.from_private_bytes(private).exchange(peer)
    except ValueError as exc:  # not hex, wrong length, or a low-order point
        raise SecAggError(f"unusable public key: {exc}") from None
    return HKDF(hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def _key_stream(key: bytes, length: int) -> np.ndarray:
    """`length` pseudo-random uint32 values: ChaCha20 encrypting zeros (one key per use)."""
    encryptor = Cipher(algorithms.ChaCha20(key, b"\x00" * 16), mode=None).encryptor()
    return np.frombuffer(encryptor.update(bytes(4 * length)), dtype="<u4")


def pair_masks(private: bytes, me: str, peers: dict[str, str], context: bytes, length: int) -> np.ndarray:
    """The sum of `me`'s signed masks with every peer (name -> mask public key), modulo 2^32."""
    total = np.zeros(length, dtype=np.uint32)
    for name, peer_public in sorted(peers.items()):
        if name == me:
            continue
        ordered = b"|".join(sorted((me.encode(), name.encode())))
        info = b"fedsilo-secagg|" + context + b"|" + ordered
        stream = _key_stream(shared_key(private, peer_public, info), length)
        if me < name:
            total += stream  # uint32 arithmetic wraps: exactly modulo 2^32
        else:
            total -= stream
    return total


def self_mask(seed: bytes, context: bytes, length: int) -> np.ndarray:
    """A silo's self mask: ChaCha20's stream under a key derived from its secret-shared seed."""
    key = HKDF(hashes.SHA256(), length=32, salt=None, info=b"fedsilo-secagg-self|" + context).derive(seed)
    return _key_stream(key, length)


# -- the silo's vector -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoding:
    """How an update becomes a ring vector; every silo of a round must hold the same one."""

    clipping_range: float
    weight_bound: int  # an upper bound of sum_k w_k over the round
    norm_bound: float = 0.0  # the L2 bound each silo clips its change to (0: the range only)
    weight_cap: int = 0  # the most weight one silo carries (0: its count at most)

    @property
    def unit(self) -> int:
        """The integer a full-range coordinate becomes at weight 1."""
        return 2**SCALE_BITS // self.weight_bound

    @property
    def scale(self) -> float:
        return self.unit / self.clipping_range

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def of(cls, values: dict) -> "Encoding":
        """An encoding read back from JSON (where an integer may arrive as a float); checked."""
        try:
            whole = {key: int(values[key]) for key in ("weight_bound", "weight_cap")}
            encoding = cls(float(values["clipping_range"]), norm_bound=float(values["norm_bound"]), **whole)
            if any(whole[key] != values[key] for key in whole):
                raise ValueError("weight_bound and weight_cap are whole numbers")
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise SecAggError(f"unreadable encoding {values!r}: {exc}") from None
        if problem := encoding.problem():
            raise SecAggError(f"unusable encoding {values!r}: {problem}")
        return encoding

    def problem(self) -> str | None:
        """Why no silo should encode with this, or None."""
        if not (math.isfinite(self.clipping_range) and self.clipping_range > 0):
            return "clipping_range must be positive and finite"
        if not 1 <= self.weight_bound <= 2**SCALE_BITS:
            return f"weight_bound must lie in [1, 2^{SCALE_BITS}]"
        if not (math.isfinite(self.norm_bound) and self.norm_bound >= 0):
            return "norm_bound must be finite and not negative"
        if self.weight_cap < 0:
            return "weight_cap must not be negative"
        return None


def float_names(state: State) -> list[str]:
    """The tensors that are averaged, in a fixed order (integer buffers keep the global value)."""
    return sorted(name for name, tensor in state.items() if tensor.is_floating_point())


def flat_change(local: State, current: State) -> torch.Tensor:
    """The floating tensors' change from the global model, as one float64 vector."""
    return torch.cat([(local[n].double() - current[n].double()).flatten() for n in float_names(current)])


def clip_norm(delta: torch.Tensor, bound: float) -> torch.Tensor:
    """`delta` scaled down to L2 norm `bound`, in float64 (a float32 model would round past it)."""
    norm = float(delta.norm())
    return delta * (bound / norm) if norm > bound else delta


def encode(local: State, current: State, weight: int, encoding: Encoding) -> tuple[np.ndarray, int]:
    """`encode_change` of `local`'s change from `current`."""
    return encode_change(flat_change(local, current), weight, encoding)


def check_weight(weight: int, encoding: Encoding) -> None:
    """SecAggError unless the weight fits the encoding's bound."""
    if not 0 < weight <= encoding.weight_bound:
        raise SecAggError(f"weight {weight} is outside (0, {encoding.weight_bound}]")


def beyond_range(delta: torch.Tensor, encoding: Encoding) -> int:
    """How many coordinates of `delta` lie beyond the clipping range (encoding clips them)."""
    return int((delta.abs() > encoding.clipping_range).sum())


def encode_change(delta: torch.Tensor, weight: int, encoding: Encoding) -> tuple[np.ndarray, int]:
    """The silo's weighted, clipped, fixed-point change as uint32 (the weight last), and how many
    coordinates were clipped. |value| <= unit * weight holds exactly: |delta / range| <= 1 in
    IEEE arithmetic, and unit * weight is an exact float."""
    check_weight(weight, encoding)
    bound = encoding.clipping_range
    clipped = beyond_range(delta, encoding)
    fixed = torch.round(delta.clamp(-bound, bound).div_(bound).mul_(encoding.unit * weight))
    vector = np.empty(fixed.numel() + 1, dtype=np.uint32)
    vector[:-1] = fixed.to(torch.int64).numpy().astype(np.uint32)  # two's complement: x mod 2^32
    vector[-1] = weight
    return vector, clipped


def unmask_sum(vectors: list[np.ndarray]) -> np.ndarray:
    """The sum of ring vectors modulo 2^32 (uint32)."""
    total = np.zeros_like(vectors[0], dtype=np.uint32)
    for vector in vectors:
        total += vector
    return total


def signed(total: np.ndarray) -> np.ndarray:
    """A ring vector read as values in [-2^31, 2^31)."""
    return total.view(np.int32)


def check_sum(values: np.ndarray, encoding: Encoding, total_weight: int) -> None:
    """Refuse a sum no honest silos could send, comparing integers only: its weight must be the
    included silos' exactly, and every coordinate within unit * total_weight."""
    if int(values[-1]) != total_weight:
        raise SecAggError(f"the unmasked total weight is {int(values[-1])}, not the silos' {total_weight}")
    limit = encoding.unit * total_weight
    body = values[:-1]
    if body.size and (int(body.max()) > limit or int(body.min()) < -limit):
        raise SecAggError("a coordinate of the unmasked sum lies outside the clipping range")


def check_norm(delta_sum: State, encoding: Encoding, total_weight: int, silos: int) -> None:
    """Refuse a sum whose mean change is longer than the norm bound each silo clipped to, beyond
    what fixed-point rounding adds (half a step per silo and coordinate)."""
    if not encoding.norm_bound:
        return
    squares = sum(float(v.pow(2).sum()) for v in delta_sum.values())
    size = sum(v.numel() for v in delta_sum.values())
    allowed = encoding.norm_bound * total_weight + silos * math.sqrt(size) / (2 * encoding.scale)
    if math.sqrt(squares) > allowed * (1 + 1e-6):  # float64 sums of squares round, slightly
        mean = math.sqrt(squares) / total_weight
        raise SecAggError(f"the mean update's norm {mean:.4g} exceeds the bound {encoding.norm_bound:g}")


def decode_sum(values: np.ndarray, current: State, encoding: Encoding) -> State:
    """sum_k w_k delta_k as tensors shaped like the current model's (from a checked sum)."""
    decoded = torch.from_numpy(values[:-1].astype(np.float64)).div_(encoding.scale)
    sums, offset = {}, 0
    for name in float_names(current):
        size = current[name].numel()
        sums[name] = decoded[offset : offset + size].view(current[name].shape)
        offset += size
    if offset != decoded.numel():
        raise SecAggError(f"the sum has {decoded.numel()} values; the model has {offset}")
    return sums


def rounding_bound(silos: int, encoding: Encoding, total_weight: int) -> float:
    """The largest error fixed point adds to one coordinate of the averaged update: half a step
    per silo, over the total weight (about K * clipping_range / 2^31 when every silo answered)."""
    return silos / (2 * encoding.scale * total_weight)
