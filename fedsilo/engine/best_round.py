"""The round a job keeps: the global model that scored best on the silos' validation rows.

Late rounds of a short federation swing (one round's mean pulls toward some silos' labels, the
next toward others'), so the last round's model is whatever the swing left. With
`evaluation.keep_best_round`, every round's global model is also scored on each silo's validation
rows (held out of all training, as for the keep step, fedsilo.keeping; counts only), and the job
keeps, registers and hands to the keep step the round whose model scored best in
`evaluation.metric` (the metric that also decides the champion and each silo's kept model).
A round's score is the mean of the silos' own validation scores, each weighted by its validation
rows up to the lower median of the round's totals (for accuracy, exactly the pooled accuracy of the
capped counts). A later round wins a tie; with no validation counts at all the last round is
kept, as before; under DP-SGD silos send none (the README's table of what each reply field
carries under DP), so a DP job keeps its last round. A resumed job's candidates are the round it
resumed from (scored again) and the rounds after it: earlier rounds' weights are no longer held.

A silo can lie about its validation counts, but only to choose among the rounds' global models,
and it moves a round's score by at most its weight's share: with three or more silos scoring the
round, no more than the others together. (Macro-F1 of the pooled counts would not do: it weighs
every class alike, so a liar spending its rows on a rare class would decide that class's F1.) A
median of the silos' scores would bound a liar more tightly, but it rests on one silo's few rows
where the weighted mean uses all of them, and for accuracy the mean is the pooled score the
benchmarks measured. The number of silos that scored a round is logged as VALIDATION_SILOS.
Counts a step did not ask for are dropped unread.
"""

from dataclasses import dataclass, replace

from fedsilo.engine.influence import TEST_FACTOR, weight_cap
from fedsilo.engine.ledger import WeightLedger
from fedsilo.engine.screening import counts_problem
from fedsilo.messages import Evaluation, WeightRef
from fedsilo.metrics import scores_from_confusion
from fedsilo.records import VALIDATION_ACCURACY, VALIDATION_F1_MACRO, VALIDATION_SILOS
from fedsilo.scenario import Scenario


@dataclass(frozen=True)
class Candidate:
    """One round's global model, its test evaluations, logged model id and validation score."""

    round_index: int
    weights: WeightRef
    final: list[Evaluation] | None  # None: a resumed job's starting round, not scored in this run
    model_id: str | None
    score: float | None


class BestRound:
    """Follows the rounds' validation scores and holds the best round's weights until the end."""

    def __init__(self, scenario: Scenario, ledger: WeightLedger, labels: int):
        evaluation = scenario.evaluation
        dp = scenario.privacy.dp is not None  # no field leaves a silo that DP-SGD does not cover
        self.wanted = evaluation.keep_best_round and evaluation.validation_fraction > 0 and not dp
        self.ledger, self.labels, self.metric = ledger, labels, evaluation.metric
        self.best: Candidate | None = None

    def screened(self, evaluations: dict[str, Evaluation], log, asked: bool) -> None:
        """Drop validation counts that were not asked for, or are not a labels x labels matrix of
        counts (the test evaluation stays)."""
        for silo, evaluation in list(evaluations.items()):
            if evaluation.validation is None:
                continue
            problem = counts_problem(evaluation.validation, self.labels) if asked else "not asked for"
            if problem:
                log.warning("validation counts of %s left out: %s", silo, problem)
                evaluations[silo] = replace(evaluation, validation=None)

    def scores(self, evaluations: list[Evaluation]) -> dict[str, float]:
        """The round's figures VALIDATION_ACCURACY and VALIDATION_F1_MACRO, the mean of the silos'
        own scores on their validation rows, each weighted by its rows up to the lower median of
        the round's totals, and VALIDATION_SILOS, how many silos scored; empty when none did."""
        counts = [e.validation for e in evaluations if e.validation is not None]
        if not self.wanted or not counts:
            return {}
        totals = [sum(map(sum, matrix)) for matrix in counts]
        cap = weight_cap(totals, TEST_FACTOR)  # as for the test splits in the union metrics
        weights = [min(total, cap or total) for total in totals]
        per_silo = [scores_from_confusion(matrix) for matrix in counts]
        figures = {
            name: sum(w * s[key] for w, s in zip(weights, per_silo, strict=True)) / sum(weights)
            for name, key in ((VALIDATION_ACCURACY, "accuracy"), (VALIDATION_F1_MACRO, "f1_macro"))
        }
        return figures | {VALIDATION_SILOS: len(per_silo)}

    def score(self, scores: dict[str, float]) -> float | None:
        """The figure rounds are ranked by: `evaluation.metric` of `scores` (None: not scored)."""
        return scores.get(VALIDATION_F1_MACRO if self.metric == "f1_macro" else VALIDATION_ACCURACY)

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


def offer_resumed(job, round_index: int, weights: WeightRef, model_id: str | None) -> None:
    """A resumed job's starting round is a candidate, scored again by the silos (its logged score
    may come from an older fedsilo or another metric); its test evaluations come with it."""
    if job.best.wanted and round_index > 0:
        final = list(job.evaluate(weights, f"round-{round_index}", validation=True).replies.values())
        job.best.offer(
            Candidate(round_index, weights, final, model_id, job.best.score(job.best.scores(final)))
        )


def kept_round(job, last: Candidate) -> Candidate:
    """The round `job` keeps (its weights, test evaluations and logged model id), tagged. A
    resumed job that had no round left to run has its test evaluations taken again."""
    chosen = job.best.chosen(last)
    if chosen.final is None:
        scored = job.evaluate(chosen.weights, f"round-{chosen.round_index}")
        chosen = replace(chosen, final=list(scored.replies.values()))
    how = "best on the silos' validation rows" if chosen.score is not None else "the last round"
    job.tracker.set_tags({"fedsilo.kept_round": f"{chosen.round_index} ({how})"})
    job.log.info("the job keeps round %d's global model: %s", chosen.round_index, how)
    return chosen


def _rank(score: float | None) -> float:
    return -1.0 if score is None else score
