"""After the last round: each silo reports the model it keeps and what it would have had alone
(the silo side is fedsilo.keeping). The coordinator checks the reports, logs per silo
`alone_accuracy`, `kept_accuracy` and `gain_from_joining` (kept minus alone) with the tag
`fedsilo.kept_model`, and the same figures over the union of the silos' test splits on the job.

A silo's choice is its own (its validation rows never leave it); what the coordinator can check
is that it is consistent: the kept model is one of the candidates it scored, with the best
validation score, and every test score adds up to the test split the silo described.
"""

import math
from dataclasses import replace

from fedsilo.engine.screening import evaluation_problem, rescored
from fedsilo.messages import KEPT_CHOICES, Kept, WeightRef
from fedsilo.steps import Keep


def keep_models(job, current: WeightRef) -> list[Kept]:
    """Ask every silo which model it keeps; the consistent reports, their test scores rescored."""
    evaluation = job.scenario.evaluation
    if not evaluation.alone and not evaluation.personalize_steps and evaluation.personalization != "ditto":
        return []
    rounds = job.scenario.federation.rounds
    outcome = job.ask(Keep(current, evaluation.personalize_steps, rounds, job.paths.root), "keep")
    labels = len(job.scenario.data.labels or [])
    for silo, report in list(outcome.replies.items()):
        if problem := kept_problem(report, labels, job.test_counts.get(silo)):
            outcome.refuse(silo, problem)
        else:
            outcome.replies[silo] = replace(
                report,
                kept_evaluation=rescored(report.kept_evaluation),
                alone=rescored(report.alone) if report.alone is not None else None,
                personalized=rescored(report.personalized) if report.personalized is not None else None,
            )
    if outcome.left_out():
        job.log.warning("keep: left out %s", outcome.left_out())
    reports = list(outcome.replies.values())
    record(job, reports)
    return reports


def kept_problem(report: Kept, labels: int, test_count: int | None) -> str | None:
    """Why a silo's report cannot be taken, or None."""
    if report.kept not in KEPT_CHOICES:
        return f"it keeps {str(report.kept)[:40]!r}, none of {KEPT_CHOICES}"
    scores = report.validation
    if any(name not in KEPT_CHOICES or not _is_score(value) for name, value in scores.items()):
        return "its validation scores must be the candidates' scores, between 0 and 1"
    if scores and (report.kept not in scores or scores[report.kept] < max(scores.values())):
        return f"it keeps {report.kept}, which is not its best candidate on its validation rows"
    candidates = (
        ("kept", report.kept_evaluation),
        ("alone", report.alone),
        ("personalized", report.personalized),
    )
    for name, evaluation in candidates:
        if evaluation is not None and (problem := evaluation_problem(evaluation, labels, test_count)):
            return f"its {name} model's test scores: {problem}"
    return None


def _is_score(value) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= 1
    )


def record(job, reports: list[Kept]) -> None:
    """Per silo and over the union: alone, kept, and the gain from joining; the choice as a tag."""
    per_silo, kept, alone = {}, [r.kept_evaluation for r in reports], [r.alone for r in reports if r.alone]
    for report in reports:
        figures = {
            "kept_accuracy": report.kept_evaluation.accuracy,
            "kept_f1_macro": report.kept_evaluation.f1_macro,
        }
        if report.alone is not None:
            figures |= {"alone_accuracy": report.alone.accuracy, "alone_f1_macro": report.alone.f1_macro}
            figures["gain_from_joining"] = report.kept_evaluation.accuracy - report.alone.accuracy
        per_silo[report.silo] = figures
        job.tracker.set_tags(
            {
                "fedsilo.kept_model": report.kept,
                **({"fedsilo.kept_note": report.note[:500]} if report.note else {}),
            },
            silo=report.silo,
        )
    union = {}
    for name, evaluations in (("kept", kept), ("alone", alone)):
        if evaluations:  # each silo's test split weighs at most the cap, as in the round metrics
            scores = job.recorder.union(evaluations)
            union |= {f"{name}_{k}": scores[k] for k in ("accuracy", "f1_macro")}
    if "kept_accuracy" in union and "alone_accuracy" in union and len(alone) == len(kept):
        union["gain_from_joining"] = union["kept_accuracy"] - union["alone_accuracy"]
    job.tracker.log_round(job.scenario.federation.rounds, union, per_silo, None)
