"""What one silo trains and tests on: its partition (or own source), split train/test."""

import functools
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import train_test_split

from fedsilo.data.examples import Examples
from fedsilo.data.generators import domain_labels
from fedsilo.data.partition import partition
from fedsilo.data.sources import load_source
from fedsilo.errors import DataError
from fedsilo.scenario import GeneratedSource, NaturalPartition, Scenario


@dataclass(frozen=True)
class SiloData:
    name: str
    train: Examples
    test: Examples
    validation: Examples | None = None  # held out of train to choose the model a silo keeps


@functools.lru_cache(maxsize=8)
def _shared_partition(scenario_json: str) -> dict[str, Examples]:
    """The shared source split over the silos without data of their own, once per scenario."""
    scenario = Scenario.model_validate_json(scenario_json)
    spec = scenario.data.partition
    column = spec.column if isinstance(spec, NaturalPartition) else None
    silos = [s.name for s in scenario.silos if s.data is None]
    seed = scenario.federation.seed
    pooled = load_source(scenario.data.source, scenario.domain, scenario.silo_names(), seed, column)
    rows = partition(pooled, spec, silos, seed)
    return {silo: pooled.take(indices) for silo, indices in rows.items()}


def silo_examples(scenario: Scenario, silo: str) -> Examples:
    """All rows of one silo, before its train/test split."""
    spec = next((s for s in scenario.silos if s.name == silo), None)
    if spec is None:
        raise DataError(f"silo {silo!r} is not in scenario {scenario.name!r}")
    if spec.data is not None:
        examples = load_source(spec.data, scenario.domain, [silo], scenario.federation.seed)
        if len(examples) < 2:
            raise DataError(f"silo {silo!r}: its data (silos[].data) has fewer than 2 rows")
        return examples
    return _shared_partition(scenario.model_dump_json())[silo]


def split(examples: Examples, test_fraction: float, seed: int, silo: str) -> tuple[Examples, Examples]:
    """Stratified train/test split; falls back to a plain split when a label has one row."""
    _, counts = np.unique(examples.labels, return_counts=True)
    stratify = examples.labels if counts.min() >= 2 else None
    try:
        train, test = train_test_split(
            np.arange(len(examples)), test_size=test_fraction, random_state=seed, stratify=stratify
        )
    except ValueError as exc:
        raise DataError(f"silo {silo!r}: cannot split {len(examples)} rows for testing ({exc})") from None
    return examples.take(train), examples.take(test)


def load_silo_data(scenario: Scenario, silo: str) -> SiloData:
    """The silo's train and test sets, deterministic for a given scenario."""
    train, test = split(
        silo_examples(scenario, silo), scenario.evaluation.test_fraction, scenario.federation.seed, silo
    )
    fraction, seed = scenario.evaluation.validation_fraction, scenario.federation.seed
    kept, validation = held_out(train, fraction, seed, silo)
    return SiloData(silo, kept, test, validation)


MIN_VALIDATION_ROWS = 4  # fewer: no validation split (the silo keeps its alone model)


def held_out(train: Examples, fraction: float, seed: int, silo: str) -> tuple[Examples, Examples | None]:
    """The training rows without a validation part, and that part (None when the fraction is 0 or
    the silo has too few rows to spare it)."""
    if not fraction or round(len(train) * fraction) < MIN_VALIDATION_ROWS:
        return train, None
    try:
        kept, validation = split(train, fraction, seed + 1, silo)
    except DataError:
        return train, None
    return kept, validation


def order_labels(scenario: Scenario, seen: set[str]) -> list[str]:
    """Label names in the order of the model's outputs, given the names found in the silos' data.

    Named labels win, then the generator's fixed list; otherwise numbers sort as numbers.
    """
    if scenario.data.labels:
        return list(scenario.data.labels)
    if _all_generated(scenario):
        return domain_labels(scenario.domain)
    return sorted(seen, key=lambda name: (len(name), name) if name.isdigit() else (0, name))


def label_names(scenario: Scenario) -> list[str]:
    """Label names in the order of the model's outputs; reads every silo's data when not named."""
    if scenario.data.labels or _all_generated(scenario):
        return order_labels(scenario, set())
    seen = {str(label) for silo in scenario.silo_names() for label in silo_examples(scenario, silo).labels}
    return order_labels(scenario, seen)


def _all_generated(scenario: Scenario) -> bool:
    return all(isinstance(s, GeneratedSource) for s in scenario.sources())
