"""The round a job keeps: the global model that scored best on the silos' validation rows.

Late rounds of a short federation swing (one round's mean pulls toward some silos' labels, the
next toward others'), so the last round's model is whatever the swing left. With
`evaluation.keep_best_round`, every round's global model is also scored on each silo's validation
rows (held out of all training, as for the keep step, fedsilo.keeping; counts only), and the job
keeps, registers and hands to the keep step the round whose model scored best on their union,
each silo weighing at most the test cap. A later round wins a tie; with no validation counts at
all the last round is kept, as before; under DP-SGD silos send none (the README's table of what
each reply field carries under DP), so a DP job keeps its last round.

A silo can lie about its validation counts, but only to choose among the rounds' global models,
and it weighs no more than its capped share of the union.
"""

from dataclasses import dataclass, replace

from fedsilo.engine.influence import bounded_union
from fedsilo.engine.ledger import WeightLedger
from fedsilo.engine.screening import MAX_COUNT
from fedsilo.messages import Evaluation, WeightRef
from fedsilo.scenario import Scenario


@dataclass(frozen=True)
class Candidate:
    """One round's global model, its test evaluations, logged model id and validation score."""

    round_index: int
    weights: WeightRef
    final: list[Evaluation]
    model_id: str | None
    score: float | None


class BestRound:
    """Follows the rounds' validation scores and holds the best round's weights until the end."""

    def __init__(self, scenario: Scenario, ledger: WeightLedger, cap: int | None, labels: int):
        evaluation = scenario.evaluation
        dp = scenario.privacy.dp is not None  # no field leaves a silo that DP-SGD does not cover
        self.wanted = evaluation.keep_best_round and evaluation.validation_fraction > 0 and not dp
        self.ledger, self.cap, self.labels = ledger, cap, labels
        self.best: Candidate | None = None

    def screened(self, evaluations: dict[str, Evaluation], log) -> None:
        """Drop validation counts that are not a labels x labels matrix of counts (the test
        evaluation stays)."""
        for silo, evaluation in list(evaluations.items()):
            if evaluation.validation is None:
                continue
            if problem := validation_problem(evaluation.validation, self.labels):
                log.warning("validation counts of %s left out: %s", silo, problem)
                evaluations[silo] = replace(evaluation, validation=None)

    def score(self, evaluations: list[Evaluation]) -> float | None:
        """Accuracy over the union of the silos' validation rows, or None when no silo scored any."""
        scored = [replace(e, confusion=e.validation) for e in evaluations if e.validation is not None]
        return bounded_union(scored, self.cap)["accuracy"] if scored else None

    def offer(self, candidate: Candidate) -> None:
        """Keep `candidate` when it scores at least as well as the best so far (releasing that)."""
        best = self.best
        if not self.wanted or best is not None and _rank(candidate.score) < _rank(best.score):
            return
        self.best = candidate
        if best is not None:
            self.ledger.release(best.weights)

    def release(self, weights: WeightRef) -> None:
        """Release a round's weights once the job moved on, unless they are the best round's."""
        if self.best is None or weights.uri != self.best.weights.uri:
            self.ledger.release(weights)

    def chosen(self, last: Candidate) -> Candidate:
        """The round the job keeps: the best one, or `last` when no round was offered."""
        return self.best or last


def kept_round(job, last: Candidate) -> tuple[WeightRef, list[Evaluation], str | None]:
    """The weights, test evaluations and logged model id of the round `job` keeps, tagged."""
    chosen = job.best.chosen(last)
    job.kept_round = chosen.round_index
    how = "best on the silos' validation rows" if chosen.score is not None else "the last round"
    job.tracker.set_tags({"fedsilo.kept_round": f"{chosen.round_index} ({how})"})
    job.log.info("the job keeps round %d's global model: %s", chosen.round_index, how)
    return chosen.weights, chosen.final, chosen.model_id


def _rank(score: float | None) -> float:
    return -1.0 if score is None else score


def validation_problem(matrix, labels: int) -> str | None:
    """Why validation counts cannot be used, or None."""
    if not isinstance(matrix, list) or len(matrix) != labels:
        return f"not a {labels} x {labels} matrix"
    if any(not isinstance(row, list) or len(row) != labels for row in matrix):
        return f"not a {labels} x {labels} matrix"
    cells = [cell for row in matrix for cell in row]
    if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in cells) or not sum(cells):
        return "counts must be non-negative integers, not all zero"
    if sum(cells) > MAX_COUNT:
        return f"counts more than {MAX_COUNT} examples"
    return None
