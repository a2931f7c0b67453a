"""The coordinator's half of double masking: rebuild secrets from the survivors' shares and remove
the masks that do not cancel by themselves.

The survivors' vectors sum to  sum_k x_k + sum_k self_k + (pairwise masks with dropped silos).
Every survivor's seed (rebuilt from t shares, checked against the digest it published) gives its
self mask; every dropped silo's masking key (rebuilt from t shares, checked against its public
key) gives the pairwise masks the survivors added with it. A dropped silo's own vector, should it
arrive late, stays hidden under its self mask: no survivor reveals a share of a dropped silo's
seed, and no silo reveals both kinds for one peer.
"""

import itertools
from collections.abc import Callable

import numpy as np

from fedsilo.messages import RevealedShares, SharedKeys
from fedsilo.privacy import secagg
from fedsilo.privacy import secagg_shares as shares
from fedsilo.privacy.secagg import SecAggError
from fedsilo.privacy.secagg_shares import View

MAX_SUBSETS = 500  # threshold-sized subsets tried when all shares together rebuild a wrong secret


def revealed_problem(reply: RevealedShares, survivors: list[str], dropped: list[str]) -> str | None:
    """Why a survivor's shares cannot be used, or None: one seed share (16 bytes) per survivor and
    one key share (32 bytes) per dropped silo, nothing else."""
    if set(reply.seeds) != set(survivors) or set(reply.mask_keys) != set(dropped):
        return "its shares are not one per survivor's seed and one per dropped silo's key"
    for value, size in [(v, 16) for v in reply.seeds.values()] + [(v, 32) for v in reply.mask_keys.values()]:
        try:
            if len(bytes.fromhex(value)) != size:
                return f"a share is not {size} bytes"
        except (TypeError, ValueError):
            return "a share is not hex"
    return None


def _combined(
    parts: dict[int, bytes], threshold: int, public: Callable[[bytes], str], expected: str
) -> bytes | None:
    """The secret the shares rebuild, checked by what it must show in public (`public(secret) ==
    expected`); when all of them together rebuild a wrong one (a silo sent a bad share),
    threshold-sized subsets are tried."""
    candidates = [parts]
    if len(parts) > threshold:
        subsets = itertools.combinations(sorted(parts), threshold)
        candidates += [{i: parts[i] for i in subset} for subset in itertools.islice(subsets, MAX_SUBSETS)]
    for candidate in candidates:
        secret = shares.combine(candidate)
        if public(secret) == expected:
            return secret
    return None


def rebuild(
    view: View, shared: dict[str, SharedKeys], revealed: dict[str, RevealedShares], survivors: list[str]
) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The survivors' seeds and the dropped silos' masking keys, each checked; SecAggError naming
    the silo whose secret no subset of the shares rebuilds."""
    dropped = sorted(set(shared) - set(survivors))
    seeds, keys = {}, {}
    for silo in survivors:
        parts = {view.index(r): bytes.fromhex(reply.seeds[silo]) for r, reply in revealed.items()}
        seeds[silo] = _combined(parts, view.threshold, shares.seed_digest, shared[silo].seed_digest)
    for silo in dropped:
        parts = {view.index(r): bytes.fromhex(reply.mask_keys[silo]) for r, reply in revealed.items()}
        keys[silo] = _combined(parts, view.threshold, secagg.public_key, view.mask_key(silo))
    missing = sorted(silo for silo, secret in (seeds | keys).items() if secret is None)
    if missing:
        raise SecAggError(f"the shares do not rebuild the secrets of {', '.join(missing)}")
    return seeds, keys


def unmasked(
    vectors: list[np.ndarray],
    view: View,
    seeds: dict[str, bytes],
    keys: dict[str, bytes],
    survivors: list[str],
) -> np.ndarray:
    """The survivors' vectors summed, less their self masks and their pairwise masks with every
    dropped silo (modulo 2^32)."""
    if len({v.shape for v in vectors}) != 1:
        raise SecAggError("the masked vectors differ in length")
    context, length = view.digest.encode(), len(vectors[0])
    total = secagg.unmask_sum(vectors)
    for silo in survivors:
        total -= secagg.self_mask(seeds[silo], context, length)
    survivors_keys = {silo: view.mask_key(silo) for silo in survivors}
    for silo, key in keys.items():  # what the survivors added with it is minus its own signed sum
        total += secagg.pair_masks(key, silo, survivors_keys, context, length)
    return total
