"""Secure aggregation's public keys, signed by their silo's identity key and checked against the
roster by every peer before it seals a share or masks: a coordinator (or anyone between) that
swaps a silo's key bundle for its own is caught before any secret is derived from it.

A silo's fit reply carries, as its `public_key`, a JWS its identity signed over its key bundle,
the job's folder and the round. The round's view holds these tokens as they came, so every silo
derives the same view digest; `bundle_text` reads the bundle inside.
"""

from fedsilo.errors import SignatureError, TrustError
from fedsilo.privacy.secagg import SecAggError
from fedsilo.trust import envelope
from fedsilo.trust.gate import serving


def signed_bundle(silo: str, bundle: str, round_index: int, exchange: str) -> str:
    """`bundle` signed by `silo`'s identity for this round of the job in `exchange`."""
    current = serving(silo)
    if current is None:
        raise TrustError(f"silo {silo}: secure aggregation signs its keys; serve the step through its gate")
    claims = {"iss": silo, "round": round_index, "exchange": exchange, "bundle": bundle}
    return envelope.sign(current.identity, claims)


def bundle_text(token: str) -> str:
    """The key bundle inside a signed one (unchecked; `check_peer_keys` checks), or "" if none."""
    if not isinstance(token, str) or token.count(".") != 2:
        return ""
    try:
        bundle = envelope.peek(token).get("bundle", "")
    except SignatureError:
        return ""
    return bundle if isinstance(bundle, str) else ""


def check_peer_keys(silo: str, peers: dict[str, str], round_index: int, exchange: str) -> None:
    """SecAggError naming every peer whose signed key bundle is not signed by that peer's roster
    key for this round and job."""
    current = serving(silo)
    if current is None or current.roster is None:
        raise SecAggError(f"silo {silo}: it has no roster to check its peers' keys against")
    problems = []
    for peer, token in sorted(peers.items()):
        try:
            claims = envelope.verify(token, current.roster.silo_key(peer), f"silo {peer}")
        except (SignatureError, TrustError) as exc:
            problems.append(f"{peer} ({exc})")
            continue
        expected = {"iss": peer, "round": round_index, "exchange": exchange}
        if {key: claims.get(key) for key in expected} != expected:
            problems.append(f"{peer} (its keys are signed for another silo, round or job)")
    if problems:
        raise SecAggError(f"silo {silo}: peer keys not signed by their silo: {'; '.join(problems)}")
