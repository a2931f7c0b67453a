"""Secure aggregation at the silo: the fit's upload hook and the three steps a silo answers.

    fit (upload hook)  clip the change to any fixed L2 bound; keep it with two fresh X25519 key
                       pairs (masking, sharing); answer the public keys, and with no fixed bound
                       the change's norm (the coordinator sets the round's bound from the median)
    ShareKeys          check the round's view (its own keys, the encoding its fit received with at
                       most the round's norm bound added, a threshold its policy allows); draw a
                       seed; seal a share of the seed and of the masking key for each peer
    Mask               open the shares sealed for it (every one must authenticate under its view);
                       clip the change to the view's norm bound and encode it; add its self mask
                       and pairwise masks, once per round; write the vector
    Unmask             for each survivor a share of its seed, for each dropped peer a share of its
                       masking key: never both for one peer, one split per round
Every check names the silo and why; a silo that refuses is absent from the step.
"""

import os
from dataclasses import replace

import numpy as np
import torch

from fedsilo.engine import influence
from fedsilo.handler import handles
from fedsilo.messages import MaskedUpdate, RevealedShares, SharedKeys
from fedsilo.paths import JobPaths
from fedsilo.privacy import pending, secagg
from fedsilo.privacy import secagg_shares as shares
from fedsilo.privacy.secagg import Encoding, SecAggError
from fedsilo.privacy.secagg_identity import bundle_text, check_peer_keys, signed_bundle
from fedsilo.privacy.secagg_shares import View
from fedsilo.privacy.secagg_steps import Mask, ShareKeys, Unmask
from fedsilo.scenario import Scenario
from fedsilo.silo import Sent, plain_upload
from fedsilo.weights import State, read_state, write_state


def norm_bounds(scenario: Scenario) -> list[float]:
    """The L2 bounds on one silo's change that the scenario sets (the smallest applies)."""
    privacy, federation = scenario.privacy, scenario.federation
    bounds = [privacy.central_dp.clipping_norm if privacy.central_dp else None]
    bounds += [federation.max_update_norm, privacy.secagg_norm_bound]
    return [bound for bound in bounds if bound]


def silo_weight(scenario: Scenario, num_examples: int, encoding: Encoding) -> int:
    """The silo's weight in the sum: 1 under central DP, else its count within the cap."""
    if scenario.privacy.central_dp:
        return 1
    return min(num_examples, encoding.weight_cap) if encoding.weight_cap else num_examples


def keep_update(
    scenario: Scenario, silo: str, local: State, current: State, num_examples: int, config: dict, uri: str
) -> Sent:
    """Clip `local`'s change from `current` to the fixed bounds of the round's fit `config`, keep it
    with fresh keys on the silo's disk, and answer the public keys, how many coordinates lie beyond
    the range, and (no fixed bound) the change's norm, from which the round's bound is set."""
    encoding = Encoding.of(
        {
            "clipping_range": scenario.privacy.clipping_range,
            "weight_bound": config["secagg_weight_bound"],
            "norm_bound": config.get("secagg_norm_bound", 0.0),
            "weight_cap": config.get("secagg_weight_cap", 0),
        }
    )
    delta = secagg.flat_change(local, current)
    bounds = norm_bounds(scenario) + ([encoding.norm_bound] if encoding.norm_bound else [])
    if bounds:
        delta = secagg.clip_norm(delta, min(bounds))
    weight = silo_weight(scenario, num_examples, encoding)
    secagg.check_weight(weight, encoding)  # encoded only at the mask step, with the round's bound
    keys = {"mask_key": secagg.new_private_key(), "share_key": secagg.new_private_key()}
    record = {"encoding": encoding.as_dict(), "weight": weight}
    pending.save(silo, uri, pending.Kept(delta.numpy(), keys, record))
    bundle = shares.key_bundle(secagg.public_key(keys["mask_key"]), secagg.public_key(keys["share_key"]))
    exchange, round_folder, _ = uri.rsplit("/", 2)  # <root>/round-NNN/<silo>.safetensors
    signed = signed_bundle(silo, bundle, int(round_folder.removeprefix("round-")), exchange)
    adaptive = not bounds and len(scenario.silos) >= influence.MIN_SILOS  # else no bound needs it
    norm = float(delta.norm()) if adaptive else 0.0
    return Sent(None, signed, secagg.beyond_range(delta, encoding), norm)


def keep_for_masking(silo, global_state: State, update_uri: str, config: dict) -> Sent:
    """The silo's upload hook under secure aggregation: nothing plain leaves it (see keep_update)."""
    local = silo.outgoing(global_state)  # personal layers carry the global values: zero change
    if not all(bool(t.isfinite().all()) for t in local.values() if t.is_floating_point()):
        raise SecAggError(f"silo {silo.silo}: local training produced NaN or infinite weights")
    return keep_update(silo.scenario, silo.silo, local, global_state, silo.num_examples, config, update_uri)


def upload_for(scenario: Scenario):
    """The silo's upload hook: kept for masking under secure aggregation, else a plain file."""
    return keep_for_masking if scenario.privacy.secure_aggregation else plain_upload


def _kept(silo: str, step) -> tuple[JobPaths, pending.Kept]:
    paths = JobPaths(step.exchange)
    return paths, pending.load(silo, paths.update_uri(step.round_index, silo))


def _same_encoding(round_encoding: Encoding, fit_encoding: Encoding) -> bool:
    """The round's encoding is the fit's, except that a norm bound the fit left open (0) may be
    set: the round's, from the silos' reported norms."""
    if fit_encoding.norm_bound:
        return round_encoding == fit_encoding
    return round_encoding == replace(fit_encoding, norm_bound=round_encoding.norm_bound)


def _checked_view(scenario: Scenario, silo: str, step: ShareKeys, kept: pending.Kept) -> View:
    """The round's view after every check a silo makes of what it receives."""
    view = View(step.round_index, step.exchange, dict(step.peers), Encoding.of(step.encoding), step.threshold)
    own = shares.key_bundle(*(secagg.public_key(kept.secrets[k]) for k in ("mask_key", "share_key")))
    if bundle_text(view.peers.get(silo, "")) != own:
        raise SecAggError(f"silo {silo}: the key list does not hold this silo's keys for the round")
    if len(view.peers) < 2 or not set(view.peers) <= set(scenario.silo_names()):
        raise SecAggError(f"silo {silo}: the peers must be two or more of the scenario's silos")
    if not _same_encoding(view.encoding, Encoding.of(kept.record["encoding"])):
        raise SecAggError(f"silo {silo}: the round's encoding differs from the one its fit received")
    least = shares.threshold_for(scenario.privacy.secagg_threshold, len(view.peers))
    if not least <= view.threshold <= len(view.peers):
        raise SecAggError(
            f"silo {silo}: threshold {view.threshold} for {len(view.peers)} peers; it needs {least} or more"
        )
    check_peer_keys(silo, view.peers, step.round_index, step.exchange)
    problems = {p: problem for p, key in view.peers.items() if (problem := shares.bundle_problem(key))}
    if problems:
        raise SecAggError(f"silo {silo}: unusable keys of {', '.join(sorted(problems))}")
    return view


@handles(ShareKeys)
def share(scenario: Scenario, silo: str, step: ShareKeys, progress=None) -> SharedKeys:
    """Seal a share of a fresh seed and of the masking key for every peer of the round's view."""
    paths, kept = _kept(silo, step)
    if "masked" in kept.record:
        raise SecAggError(f"silo {silo}: it has masked this round already; it shares once")
    view = _checked_view(scenario, silo, step, kept)
    seed = os.urandom(shares.SEED_BYTES)
    peers = sorted(view.peers)
    split = shares.split(seed, kept.secrets["mask_key"], view.threshold, len(peers))
    sealed = {
        peer: shares.seal(kept.secrets["share_key"], view.share_key(peer), view.digest, silo, peer, part)
        for peer, part in zip(peers, split, strict=True)
    }
    kept.secrets["seed"] = seed
    kept.record["view"] = view.as_record()
    pending.save(silo, paths.update_uri(step.round_index, silo), kept)
    tensors = {peer: torch.frombuffer(bytearray(box), dtype=torch.uint8) for peer, box in sealed.items()}
    bundle = write_state(tensors, paths.shares_uri(step.round_index, silo))
    return SharedKeys(silo, step.round_index, bundle, shares.seed_digest(seed))


def _view_for(silo: str, kept: pending.Kept, digest: str) -> View:
    if "view" not in kept.record:
        raise SecAggError(f"silo {silo}: it has shared no keys this round")
    view = View.of_record(kept.record["view"])
    if view.digest != digest:
        raise SecAggError(f"silo {silo}: the step is for another view of the round than the one it shared")
    return view


def _opened(silo: str, step: Mask, paths: JobPaths, kept: pending.Kept, view: View) -> dict[str, bytes]:
    """The share each peer sealed for this silo; refuses (naming them) when any does not open."""
    opened, failed = {}, []
    for peer, ref in sorted(step.bundles.items()):
        try:
            if ref.uri != paths.shares_uri(step.round_index, peer):
                raise SecAggError(f"the shares of {peer} are not where they belong")
            box = bytes(read_state(ref)[silo].numpy())
            private, sender = kept.secrets["share_key"], view.share_key(peer)
            opened[peer] = shares.unseal(private, sender, view.digest, peer, silo, box)
        except Exception:  # a missing entry, a checksum, a forged or foreign box
            failed.append(peer)
    if failed:
        raise SecAggError(
            f"silo {silo}: will not mask: the shares of {', '.join(failed)} do not open under its view "
            "of the round (another peer list, encoding or threshold, or a forged bundle)"
        )
    return opened


@handles(Mask)
def mask(scenario: Scenario, silo: str, step: Mask, progress=None) -> MaskedUpdate:
    """Add the self mask and the pairwise masks with the peers that shared; once per round."""
    paths, kept = _kept(silo, step)
    view = _view_for(silo, kept, step.digest)
    peers = sorted(step.bundles)
    if silo not in peers or not set(peers) <= set(view.peers) or len(peers) < view.threshold:
        raise SecAggError(f"silo {silo}: the peers to mask with must include it, {view.threshold} or more")
    if kept.record.get("masked", peers) != peers:
        raise SecAggError(f"silo {silo}: it masked with other peers this round; it masks once")
    opened = _opened(silo, step, paths, kept, view)
    kept.secrets |= {f"from/{peer}": share for peer, share in opened.items()}
    kept.record["masked"] = peers
    pending.save(silo, paths.update_uri(step.round_index, silo), kept)
    delta, encoding = torch.from_numpy(kept.vector), view.encoding
    if encoding.norm_bound:
        delta = secagg.clip_norm(delta, encoding.norm_bound)
    vector, _ = secagg.encode_change(delta, kept.record["weight"], encoding)
    context, length = view.digest.encode(), len(vector)
    keys = {peer: view.mask_key(peer) for peer in peers}
    masked = vector + secagg.self_mask(kept.secrets["seed"], context, length)
    masked += secagg.pair_masks(kept.secrets["mask_key"], silo, keys, context, length)
    out_uri = paths.masked_uri(step.round_index, 0, silo)  # attempt 0: a silo masks once per round
    ref = write_state({"masked": torch.from_numpy(masked.view(np.int32))}, out_uri)
    return MaskedUpdate(silo, step.round_index, 0, ref)


@handles(Unmask)
def unmask(scenario: Scenario, silo: str, step: Unmask, progress=None) -> RevealedShares:
    """Shares of each survivor's seed and of each dropped peer's masking key, for one split only."""
    paths, kept = _kept(silo, step)
    view = _view_for(silo, kept, step.digest)
    survivors, dropped = sorted(set(step.survivors)), sorted(set(step.dropped))
    if both := set(survivors) & set(dropped):
        raise SecAggError(f"silo {silo}: asked for both shares of {', '.join(sorted(both))}: refused")
    if set(survivors) | set(dropped) != set(kept.record.get("masked", [])) or silo not in survivors:
        raise SecAggError(f"silo {silo}: survivors and dropped must split the peers it masked with")
    if len(survivors) < view.threshold:
        raise SecAggError(f"silo {silo}: {len(survivors)} survivors; the threshold is {view.threshold}")
    split = {"survivors": survivors, "dropped": dropped}
    if kept.record.get("revealed", split) != split:
        raise SecAggError(f"silo {silo}: it revealed shares for another split of this round: refused")
    if "revealed" in kept.record:
        raise SecAggError(f"silo {silo}: it already revealed this round's shares (they are deleted)")
    received = {peer: kept.secrets[f"from/{peer}"] for peer in survivors + dropped}
    seeds = {peer: received[peer][: shares.SEED_BYTES].hex() for peer in survivors}
    keys = {peer: received[peer][shares.SEED_BYTES :].hex() for peer in dropped}
    # the round is over for this silo: keep only the record that it revealed, not its secrets
    forgotten = pending.Kept(np.zeros(0), {}, kept.record | {"revealed": split})
    pending.save(silo, paths.update_uri(step.round_index, silo), forgotten)
    return RevealedShares(silo, step.round_index, seeds, keys)
