"""Reply screening: which silos count in a step, and one word for each that does not.

Replies are untrusted input. A silo is **absent** when it gave no reply, has **declined** when it
said no under its own rules (its privacy budget), and is **refused** when it answered but the
coordinator refused the reply (it speaks for another silo, is of the wrong type, or fails a check).
"""

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from fedsilo.errors import FederationError
from fedsilo.messages import DataSummary, Evaluation
from fedsilo.metrics import scores_from_confusion
from fedsilo.scenario import Scenario
from fedsilo.steps import Step
from fedsilo.transport import Answers


@dataclass
class Outcome:
    """The silos' answers to one step after screening: the replies that count, by silo, and the
    silos that do not, with why."""

    replies: dict[str, Any]
    absent: list[str] = field(default_factory=list)
    declined: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    arrived: list[str] = field(default_factory=list)  # the order replies came in

    def refuse(self, silo: str, reason: str) -> None:
        self.replies.pop(silo, None)
        self.refused[silo] = reason

    def decline(self, silo: str, reason: str) -> None:
        self.replies.pop(silo, None)
        self.declined[silo] = reason

    def left_out(self) -> dict[str, str]:
        """Every silo that does not count, with why."""
        return dict.fromkeys(self.absent, "did not answer") | self.declined | self.refused

    def counted(self) -> list[str]:
        return sorted(self.replies)


def screen(step: Step, asked: list[str], answers: Answers) -> Outcome:
    """The replies of the asked silos that are of the step's reply type and speak for the silo
    they were addressed to; any other reply is refused, naming what it claimed."""
    answered = {**answers.replies, **answers.declined, **answers.refused}
    outcome = Outcome({}, absent=[s for s in asked if s in answers.absent or s not in answered])
    outcome.arrived = [silo for silo in answers.arrived if silo in asked]
    for silo, reason in answers.declined.items():
        if silo in asked:
            outcome.decline(silo, reason)
    for silo, reason in answers.refused.items():
        if silo in asked:
            outcome.refuse(silo, reason)
    for silo, reply in answers.replies.items():
        if silo not in asked:
            continue
        if not isinstance(reply, step.reply):
            outcome.refuse(silo, f"answered {step.label} with a {type(reply).__name__}")
        elif getattr(reply, "silo", silo) != silo:
            outcome.refuse(silo, f"its reply to {step.label} names silo {reply.silo!r}")
        else:
            outcome.replies[silo] = reply
    return outcome


def check_quorum(scenario: Scenario, outcome_or_counted, step: str) -> None:
    """Fail the step (e.g. "round 3"), naming each silo left out and why, when fewer than
    `min_silos` count."""
    if isinstance(outcome_or_counted, Outcome):
        counted, reasons = outcome_or_counted.counted(), outcome_or_counted.left_out()
    else:
        counted, reasons = list(outcome_or_counted), {}
    if len(counted) >= scenario.min_silos:
        return
    missing = sorted(set(scenario.silo_names()) - set(counted))
    named = [f"{silo} ({reasons[silo]})" if silo in reasons else silo for silo in missing]
    raise FederationError(
        f"{step}: only {len(counted)} of {len(scenario.silos)} silos answered "
        f"(min_silos is {scenario.min_silos}); missing: {', '.join(named)}"
    )


MAX_COUNT = 2**53  # counts stay exact as floats; a larger one is no data set's
MAX_LOSS = 1e9  # a mean cross-entropy beyond this is no model's (and would overflow the union's)


def counts_problem(matrix, labels: int) -> str | None:
    """Why `matrix` is not a labels x labels matrix of counts (non-negative integers, not all zero,
    at most MAX_COUNT in all), or None."""
    if not isinstance(matrix, list) or len(matrix) != labels:
        return f"is not {labels} x {labels}"
    if any(not isinstance(row, list) or len(row) != labels for row in matrix):
        return f"is not {labels} x {labels}"
    cells = [cell for row in matrix for cell in row]
    if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in cells) or not sum(cells):
        return "must hold non-negative integer counts, not all zero"
    if sum(cells) > MAX_COUNT:
        return f"counts more than {MAX_COUNT} examples"
    return None


def evaluation_problem(evaluation: Evaluation, num_labels: int, test_count: int | None = None) -> str | None:
    """Why a silo's evaluation cannot enter the union metrics, or None: its confusion matrix must
    be num_labels x num_labels non-negative integer counts adding up to the test count the silo
    reported at prepare (so no silo outweighs its own test split), and its loss a finite number."""
    matrix = evaluation.confusion
    if problem := counts_problem(matrix, num_labels):
        return f"confusion matrix {problem}"
    total = sum(map(sum, matrix))
    if test_count is not None and total != test_count:
        return f"confusion matrix counts {total} examples; the silo reported {test_count} test examples"
    loss = evaluation.loss
    if isinstance(loss, bool) or not isinstance(loss, int | float) or not 0 <= loss <= MAX_LOSS:
        return f"loss {loss!r} is not a number in [0, {MAX_LOSS:g}]"
    return None


def rescored(evaluation: Evaluation) -> Evaluation:
    """The evaluation with accuracy and macro-F1 recomputed from its counts: a silo's counts are
    checked, its claimed scores are not used."""
    return replace(evaluation, **scores_from_confusion(evaluation.confusion))


def screen_fits(
    outcome: Outcome, reply_problem, num_labels: int, test_counts: dict[str, int], ledger
) -> None:
    """Sort a round's fit replies: a silo that declined, a reply the aggregation cannot take
    (`reply_problem`) or whose local evaluation does not fit is refused and its update deleted;
    the others keep their local evaluation rescored from its counts."""
    for silo, fit in list(outcome.replies.items()):
        local = fit.local
        problem = reply_problem(fit)
        if not fit.refused and not problem and local is not None:
            problem = evaluation_problem(local, num_labels, test_counts.get(silo))
        if fit.refused:
            outcome.decline(silo, fit.refused)
        elif problem:
            outcome.refuse(silo, problem)
        else:
            outcome.replies[silo] = replace(fit, local=rescored(local))
        if silo not in outcome.replies:
            ledger.release(fit.update)


def screen_evaluations(
    outcome: Outcome, num_labels: int, test_counts: dict[str, int] | None = None
) -> Outcome:
    """Refuse evaluations whose confusion matrix does not fit the labels or the test count."""
    for silo, evaluation in list(outcome.replies.items()):
        expected = test_counts.get(silo) if test_counts is not None else None
        if test_counts is not None and expected is None:
            outcome.refuse(silo, "it did not describe its data at prepare")
        elif problem := evaluation_problem(evaluation, num_labels, expected):
            outcome.refuse(silo, problem)
        else:
            outcome.replies[silo] = rescored(evaluation)
    return outcome


def summary_problem(summary: DataSummary) -> str | None:
    """Why a silo's data description cannot be used, or None: counts are non-negative integers
    and it holds training and test examples."""
    for split, counts in (("training", summary.train_counts), ("test", summary.test_counts)):
        values = list(counts.values())
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
            return f"its {split} label counts must be non-negative integers"
        if sum(values) > MAX_COUNT:
            return f"it reports more than {MAX_COUNT} {split} examples"
        if not sum(values):
            return f"it reports no {split} examples"
    return None


def screen_summaries(outcome: Outcome, max_examples: dict[str, int] | None = None) -> None:
    """Refuse data descriptions that cannot be used, that claim more training examples than the
    roster pins for the silo (`max_examples`), and those whose image shape differs from the
    majority's (one silo cannot change the model's input for the others); a tie fails the job."""
    for silo, summary in list(outcome.replies.items()):
        pin = (max_examples or {}).get(silo)
        if problem := summary_problem(summary):
            outcome.refuse(silo, problem)
        elif pin is not None and sum(summary.train_counts.values()) > pin:
            claimed = sum(summary.train_counts.values())
            outcome.refuse(silo, f"it claims {claimed} training examples; the roster pins at most {pin}")
    shapes = Counter(tuple(s.input_shape) for s in outcome.replies.values())
    if len(shapes) <= 1:
        return
    (common, most), (_, runner_up) = shapes.most_common(2)
    if most == runner_up:
        detail = ", ".join(f"{s.silo} {tuple(s.input_shape)}" for s in outcome.replies.values())
        raise FederationError(f"silos hold images of different shapes ({detail}); resize them to one")
    for silo, summary in list(outcome.replies.items()):
        if tuple(summary.input_shape) != common:
            outcome.refuse(silo, f"its images are {tuple(summary.input_shape)}, the others' {common}")


def hold_updates(outcome: Outcome, paths, round_index: int, ledger) -> None:
    """Hold each update at the URI derived for its silo; refuse one anywhere else (it is not
    the coordinator's to read or delete). Silos absent may still write theirs late."""
    for silo, fit in list(outcome.replies.items()):
        expected = paths.update_uri(round_index, silo)
        if fit.update is not None and fit.update.uri != expected:
            outcome.refuse(silo, f"its update is at {fit.update.uri[:200]}, not at {expected}")
        elif fit.update is not None:
            ledger.hold(fit.update)
    for silo in [*outcome.absent, *outcome.refused]:
        ledger.expect_late(paths.update_uri(round_index, silo))
