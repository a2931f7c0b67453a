"""Offline data generators, one per domain, so the default run downloads nothing.

Each silo writes in its own style (feature skew) and draws labels from its own mix (label skew);
every note mixes phrases of its label with a distractor from another label and some filler, and a
share of labels is flipped (label noise).
"""

import numpy as np
import pandas as pd

from fedsilo.data.vocab import FILLER, LABELS, STYLES
from fedsilo.errors import UnknownKind


def domain_labels(domain: str) -> list[str]:
    """The generator's label names for a domain, in a fixed order; UnknownKind for another domain."""
    if domain not in LABELS:
        raise UnknownKind("domain", domain, list(LABELS))
    return sorted(LABELS[domain])


def _example(rng: np.random.Generator, domain: str, label: str, style: str) -> str:
    bank = LABELS[domain]
    own = list(rng.choice(bank[label], size=2, replace=False))
    other = rng.choice([name for name in bank if name != label])
    phrases = own + [str(rng.choice(bank[other]))]
    rng.shuffle(phrases)
    sex = str(rng.choice(["man", "woman"]))
    return style.format(
        age=int(rng.integers(18, 90)),
        sex=sex,
        sex_short=sex[0].upper(),
        findings=", ".join(phrases),
        filler=str(rng.choice(FILLER[domain])),
    )


def generate(
    domain: str,
    silos: list[str],
    rows_per_silo: int,
    seed: int,
    label_noise: float = 0.05,
    label_skew: float | None = 2.0,
) -> pd.DataFrame:
    """Rows `text, label, silo` for each named silo; the same arguments give the same rows."""
    labels = domain_labels(domain)
    styles = STYLES[domain]
    frames = []
    for index, silo in enumerate(silos):
        rng = np.random.default_rng([seed, index])
        prior = (
            rng.dirichlet([label_skew] * len(labels)) if label_skew else np.full(len(labels), 1 / len(labels))
        )
        drawn = rng.choice(labels, size=rows_per_silo, p=prior)
        style = styles[index % len(styles)]
        texts = [_example(rng, domain, str(label), style) for label in drawn]
        flip = rng.random(rows_per_silo) < label_noise
        noisy = np.where(flip, rng.choice(labels, size=rows_per_silo), drawn)
        frames.append(pd.DataFrame({"text": texts, "label": noisy, "silo": silo}))
    return pd.concat(frames, ignore_index=True)
