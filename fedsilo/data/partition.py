"""Partitioners: split one pooled data set over silos. All are seeded and return row indices.

`PARTITIONERS` is the closed registry of partition kinds; a kind outside it is an UnknownKind.
"""

from collections.abc import Callable
from typing import Any

import numpy as np

from fedsilo.data.examples import Examples
from fedsilo.errors import DataError, UnknownKind
from fedsilo.scenario import NaturalPartition

MIN_ROWS_PER_SILO = 2
_DRAWS = 20


def iid(n_rows: int, silos: list[str], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Shuffle and deal rows out in equal shares."""
    shares = np.array_split(rng.permutation(n_rows), len(silos))
    return dict(zip(silos, shares))


def dirichlet(
    labels: np.ndarray, silos: list[str], alpha: float, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Label skew: each label's rows go to silos in proportions drawn from Dirichlet(alpha).

    Redraws (up to 20 times) while some silo would get fewer than 2 rows.
    """
    for _ in range(_DRAWS):
        assigned: list[list[int]] = [[] for _ in silos]
        for label in np.unique(labels):
            rows = rng.permutation(np.flatnonzero(labels == label))
            shares = rng.dirichlet([alpha] * len(silos))
            cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(int)
            for k, part in enumerate(np.split(rows, cuts)):
                assigned[k].extend(part.tolist())
        if min(len(a) for a in assigned) >= MIN_ROWS_PER_SILO:
            break
    return {silo: np.sort(np.array(rows, dtype=int)) for silo, rows in zip(silos, assigned)}


def quantity(n_rows: int, silos: list[str], alpha: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Quantity skew: silo sizes drawn from Dirichlet(alpha), rows shuffled IID."""
    for _ in range(_DRAWS):
        sizes = rng.dirichlet([alpha] * len(silos))
        cuts = (np.cumsum(sizes)[:-1] * n_rows).astype(int)
        parts = np.split(rng.permutation(n_rows), cuts)
        if min(len(p) for p in parts) >= MIN_ROWS_PER_SILO:
            break
    return dict(zip(silos, parts))


def natural(groups: np.ndarray | None, silos: list[str], column: str) -> dict[str, np.ndarray]:
    """Rows whose `column` value equals the silo's name."""
    if groups is None:
        raise DataError(f"data.partition 'natural' reads column {column!r}, which the data does not have")
    return {silo: np.flatnonzero(groups == silo) for silo in silos}


Partitioner = Callable[[Examples, Any, list[str], np.random.Generator], dict[str, np.ndarray]]

PARTITIONERS: dict[str, Partitioner] = {
    "iid": lambda examples, spec, silos, rng: iid(len(examples), silos, rng),
    "dirichlet": lambda examples, spec, silos, rng: dirichlet(examples.labels, silos, spec.alpha, rng),
    "quantity": lambda examples, spec, silos, rng: quantity(len(examples), silos, spec.alpha, rng),
    "natural": lambda examples, spec, silos, rng: natural(examples.groups, silos, spec.column),
}


def partition(examples: Examples, spec: Any, silos: list[str], seed: int) -> dict[str, np.ndarray]:
    """Row indices per silo under the configured partitioner; every silo must get rows."""
    kind = getattr(spec, "kind", None)
    partitioner = PARTITIONERS.get(kind) if isinstance(kind, str) else None
    if partitioner is None:
        raise UnknownKind("partition kind", kind, list(PARTITIONERS))
    parts = partitioner(examples, spec, silos, np.random.default_rng(seed))
    empty = [silo for silo, rows in parts.items() if len(rows) < MIN_ROWS_PER_SILO]
    if empty:
        hint = (
            f"values found in column {spec.column!r}: {sorted(set(examples.groups))[:10]}"
            if isinstance(spec, NaturalPartition)
            else "use more data, fewer silos or a larger alpha"
        )
        raise DataError(
            f"silo(s) {', '.join(empty)} got fewer than {MIN_ROWS_PER_SILO} rows from the "
            f"{spec.kind} partition of {len(examples)} rows; {hint}"
        )
    return parts
