"""The champion decision: does this job's final model take the registry's `champion` alias?

The current champion is scored on this job's test data and the new model wins when the median of
its per-silo scores is at least the champion's, over the silos that scored both (each silo one
vote, so no silo's claimed test-set size or scores decide alone). A champion that cannot load into
this model (other labels or architecture) is replaced without a comparison only when the scenario
allows it; one that cannot be read at all is kept, never replaced on doubt.
"""

import math
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

from fedsilo.messages import Evaluation, WeightRef
from fedsilo.metrics import global_metrics
from fedsilo.scenario import Scenario
from fedsilo.weights import local_path, same_layout


def decide(
    scenario: Scenario,
    tracker,
    candidate: WeightRef,
    final: list[Evaluation],
    score_champion: Callable[[str], list[Evaluation]],
    merged_file: Callable[[str, str], str],
) -> tuple[bool, str]:
    """Whether the candidate becomes champion, and why. `score_champion(path)` has every silo
    score the champion's weights; `merged_file(adapter_path, scratch)` gives a LoRA model's plain
    weights."""
    metric = scenario.evaluation.metric
    try:
        champion = tracker.champion_weights()
    except Exception as exc:  # registry or artifact store unreachable, files missing
        return False, f"{exc}; champion kept"
    if champion is None:
        return True, f"first registered model ({metric} {global_metrics(final)[metric]:.4f})"
    version, path = champion
    with tempfile.TemporaryDirectory() as scratch:
        if scenario.model.lora is not None:  # the champion is a merged, plain model
            merged = merged_file(local_path(candidate, scratch), scratch)
            candidate = WeightRef(Path(merged).as_uri(), "", Path(merged).stat().st_size)
        comparable = same_layout(path, candidate)
    if not comparable:
        if scenario.retraining.replace_incompatible_champion:
            return True, f"champion v{version} has another architecture or label set; replaced"
        return False, (
            f"champion v{version} has another architecture or label set, so the two cannot be "
            "compared; champion kept (set retraining.replace_incompatible_champion: true to replace it)"
        )
    return verdict(final, score_champion(path), metric, version)


def verdict(
    candidate: list[Evaluation], champion: list[Evaluation], metric: str, version: str
) -> tuple[bool, str]:
    """Whether the candidate takes the alias from champion `version`, and why.

    Each silo that scored both models has one vote: the candidate wins when the median of its
    per-silo scores is at least the champion's. No silo's test-set size, nor any one silo's
    scores when three or more silos vote, can flip the verdict of the others.
    """
    common = {e.silo for e in candidate} & {e.silo for e in champion}
    if not common:
        return False, f"no silo could evaluate champion v{version}; champion kept"
    new = per_silo_median([e for e in candidate if e.silo in common], metric)
    old = per_silo_median([e for e in champion if e.silo in common], metric)
    where = f"(median over {len(common)} silos' test data, one vote each)"
    if beats(new, old):
        return True, f"{metric} {new:.4f} >= champion v{version}'s {old:.4f} {where}"
    return False, f"{metric} {new:.4f} < champion v{version}'s {old:.4f} {where}; champion kept"


def per_silo_median(evaluations: list[Evaluation], metric: str) -> float:
    """The median of the silos' own scores: each silo one vote, whatever its test-set size."""
    return float(statistics.median(getattr(e, metric) for e in evaluations))


def beats(candidate: float, champion: float | None) -> bool:
    """Whether a candidate score is at least as good as the champion's (none: always)."""
    return champion is None or math.isnan(champion) or candidate >= champion
