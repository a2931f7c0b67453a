"""Text federation that neither stalls nor swings: the learning rate follows one course across a
job's rounds, and a job keeps the round whose global model scored best on the silos' validation
rows rather than whatever its last round produced."""

import logging
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from fedsilo.engine import Coordinator
from fedsilo.engine.best_round import BestRound
from fedsilo.engine.ledger import WeightLedger
from fedsilo.engine.screening import counts_problem
from fedsilo.messages import Evaluation
from fedsilo.modeling import EncodedSet
from fedsilo.paths import JobPaths
from fedsilo.records import ResumePoint, RoundRecord
from fedsilo.scenario import load_scenario
from fedsilo.silo import participant, release_participants
from fedsilo.steps import Evaluate, Fit, Keep
from fedsilo.training import FitSettings, Schedule, fit
from fedsilo.transport import InProcess
from tests.conftest import REPO
from tests.engine import Recorder, run

ROWS = "data.source.rows_per_silo=120"  # a validation split of 10% has rows to score


class ClaimsRound(InProcess):
    """Real in-process silos whose validation counts say round `favourite` was perfect and every
    other round wrong; records what the coordinator sends."""

    def __init__(self, favourite: int):
        super().__init__()
        self.favourite = favourite
        self.fits: dict[int, str] = {}  # round -> sha256 of the global model the fit started from
        self.kept_from = ""
        self.asked_validation: list[bool] = []

    def ask(self, scenario, step, silos):
        answers = super().ask(scenario, step, silos)
        if isinstance(step, Fit):
            self.fits[step.round_index] = step.weights.sha256
        if isinstance(step, Keep):
            self.kept_from = step.weights.sha256
        if isinstance(step, Evaluate) and step.name.startswith("round-"):
            self.asked_validation.append(step.validation)
            right = step.name == f"round-{self.favourite}"
            for silo, reply in answers.replies.items():
                if reply.validation is not None:
                    n, size = sum(map(sum, reply.validation)), len(reply.validation)
                    claim = [[0] * size for _ in range(size)]
                    claim[0][0 if right else 1] = n
                    answers.replies[silo] = replace(reply, validation=claim)
        return answers


def test_the_job_keeps_registers_and_hands_on_the_round_best_on_validation(tmp_path):
    silos = ClaimsRound(favourite=2)
    linear = "federation.learning_rate_schedule=linear"  # the schedule's whole course, in a job
    result, tracker = run(tmp_path, ROWS, "federation.rounds=3", linear, transport=silos)
    assert silos.asked_validation == [False, True, True, True]  # round 0 is the starting model
    assert result.kept_round == 2
    assert result.final_accuracy == pytest.approx(tracker.rounds[2]["global_accuracy"])
    assert tracker.tags[None]["fedsilo.kept_round"].startswith("2 (best on the silos' validation rows")
    assert [tracker.rounds[r]["global_validation_accuracy"] for r in (1, 2, 3)] == [0.0, 1.0, 0.0]
    assert silos.kept_from == silos.fits[3]  # round 2's model (sent to round 3's fits) is kept
    assert tracker.registered == "m-2"  # and registered


def test_without_validation_rows_the_last_round_is_kept_and_nothing_extra_is_asked(tmp_path):
    silos = ClaimsRound(favourite=1)
    result, tracker = run(
        tmp_path, ROWS, "federation.rounds=2", "evaluation.validation_fraction=0", transport=silos
    )
    assert silos.asked_validation == [False, False, False]
    assert result.kept_round == 2 and tracker.registered == "m-2"
    assert "global_validation_accuracy" not in tracker.rounds[2]
    assert tracker.tags[None]["fedsilo.kept_round"] == "2 (the last round)"


class ClaimsMatrices(InProcess):
    """Real in-process silos whose validation counts are, per round, a share of their rows
    (row = true label, column = prediction, in tenths; round 1 predicts the majority class)."""

    SHARES = {"round-1": [[8, 0], [2, 0]], "round-2": [[5, 3], [0, 2]], "round-3": [[0, 8], [2, 0]]}

    def ask(self, scenario, step, silos):
        answers = super().ask(scenario, step, silos)
        if isinstance(step, Evaluate) and (shares := self.SHARES.get(step.name)):
            for silo, reply in answers.replies.items():
                if reply.validation is not None:
                    tenth = max(1, sum(map(sum, reply.validation)) // 10)
                    size = len(reply.validation)  # the shares fill the top-left corner
                    claim = [[0] * size for _ in range(size)]
                    for row, counts in enumerate(shares):
                        claim[row][:2] = [tenth * share for share in counts]
                    answers.replies[silo] = replace(reply, validation=claim)
        return answers


@pytest.mark.parametrize(("metric", "kept"), [("accuracy", 1), ("f1_macro", 2)])
def test_the_round_kept_is_the_best_in_the_scenarios_metric(tmp_path, metric, kept):
    """Round 1 predicts the majority class (accuracy 0.8, macro-F1 over smoke's 5 labels 0.18),
    round 2 both classes (0.7, 0.27): a job judged on macro-F1 keeps round 2."""
    result, tracker = run(
        tmp_path, ROWS, "federation.rounds=3", f"evaluation.metric={metric}", transport=ClaimsMatrices()
    )
    assert result.kept_round == kept and tracker.registered == f"m-{kept}"
    curves = {
        key: [tracker.rounds[r][f"global_validation_{key}"] for r in (1, 2)]
        for key in ("accuracy", "f1_macro")
    }
    assert curves["accuracy"] == pytest.approx([0.8, 0.7])
    assert curves["f1_macro"] == pytest.approx([(16 / 18) / 5, (10 / 13 + 4 / 7) / 5])


def test_validation_counts_that_are_not_counts_are_left_out():
    assert counts_problem([[1, 0], [0, 1]], 2) is None
    assert "2 x 2" in counts_problem([[1, 0, 0], [0, 1, 0]], 2)
    assert "non-negative" in counts_problem([[-5, 0], [0, 9]], 2)
    assert "non-negative" in counts_problem([[0.5, 0], [0, 1]], 2)
    assert "non-negative" in counts_problem([[0, 0], [0, 0]], 2)


def test_one_course_across_rounds_equals_one_run_of_all_their_steps():
    rounds, per_round = 4, 5
    settings = FitSettings(epochs=1, batch_size=2, learning_rate=1.0, optimizer="adamw", seed=0)
    settings = replace(settings, steps=per_round)
    by_round = [
        settings.along(10, 0.1, rounds, index).schedule.factor(step)
        for index in range(1, rounds + 1)
        for step in range(per_round)
    ]
    whole = Schedule(0, rounds * per_round, 2)
    assert by_round == [whole.factor(step) for step in range(rounds * per_round)]
    assert by_round[:3] == [1 / 3, 2 / 3, 1.0] and by_round[-1] == pytest.approx(1 / 18)
    assert max(by_round) == 1.0 and all(f > 0 for f in by_round)


class Linear(torch.nn.Linear):
    def __init__(self):
        super().__init__(3, 2)

    def forward(self, pixel_values):
        return super().forward(pixel_values)


def test_fit_follows_the_schedule_step_by_step():
    torch.manual_seed(0)
    data = EncodedSet({"pixel_values": torch.randn(8, 3)}, torch.tensor([0, 1] * 4), pad=0)
    settings = FitSettings(epochs=1, batch_size=4, learning_rate=0.1, optimizer="sgd", seed=0, steps=2)
    past_the_end = replace(settings, schedule=Schedule(start=10, total=10, warmup=0))  # factor 0
    for chosen, moves in ((settings, True), (past_the_end, False)):
        model = Linear()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        fit(model, data, chosen)
        moved = any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
        assert moved == moves


class SendsUnasked(ClaimsRound):
    """Real silos, one of which attaches validation counts nobody asked for, ragged and negative."""

    def ask(self, scenario, step, silos):
        answers = super().ask(scenario, step, silos)
        if isinstance(step, Evaluate) and "clinic-a" in answers.replies:
            reply = answers.replies["clinic-a"]
            answers.replies["clinic-a"] = replace(reply, validation=[[-5, 1], [2]])
        return answers


@pytest.mark.parametrize("off", ["evaluation.keep_best_round=false", "evaluation.validation_fraction=0"])
def test_validation_counts_nobody_asked_for_are_dropped_unread(tmp_path, off):
    result, tracker = run(tmp_path, ROWS, "federation.rounds=2", off, transport=SendsUnasked(favourite=1))
    assert result.kept_round == 2
    assert not any("global_validation_accuracy" in figures for figures in tracker.rounds.values())


def test_in_a_round_one_silo_weighs_at_most_the_lower_median_validation_total():
    scenario = load_scenario(REPO / "scenarios" / "smoke.yaml", [])
    best = BestRound(scenario, WeightLedger(logging.getLogger("test")), labels=2)
    honest = {"a": [[2, 3], [4, 0]], "b": [[5, 0], [1, 3]]}  # 9 rows each: 2 and 8 right
    for claim, right in (([[30, 0], [0, 0]], 9), ([[0, 30], [0, 0]], 0)):  # 30 rows, all right or wrong
        claims = honest | {"liar": claim}
        scored = [Evaluation(silo, 0, 0, 0, [[1]], validation=counts) for silo, counts in claims.items()]
        figures = best.scores(scored)
        assert figures["global_validation_accuracy"] == pytest.approx((2 + 8 + right) / 27)  # 9 rows, not 30
        assert figures["global_validation_silos"] == 3


@pytest.mark.parametrize("metric", ["accuracy", "f1_macro"])
def test_a_liar_spending_its_rows_on_a_rare_class_cannot_choose_the_round(metric):
    """Four honest silos find round 1 better in both metrics; the liar claims round 1 missed all
    its positives and round 2 found them all. Macro-F1 of the pooled counts (every silo 100 rows,
    within any cap) would reverse the choice: 0.54 against 0.71, where the honest silos alone give
    0.82 against 0.49. The weighted mean of the silos' own scores gives 0.66 against 0.49."""
    scenario = load_scenario(REPO / "scenarios" / "smoke.yaml", [f"evaluation.metric={metric}"])
    best = BestRound(scenario, WeightLedger(logging.getLogger("test")), labels=2)

    def score(honest, lie):
        claims = [*honest, lie]
        return best.score(
            best.scores([Evaluation(f"s{k}", 0, 0, 0, [[1]], validation=c) for k, c in enumerate(claims)])
        )

    first = [[[93, 2], [1, 4]], [[90, 5], [2, 3]], [[94, 1], [1, 4]], [[91, 4], [0, 5]]]
    second = [[[60, 35], [1, 4]], [[70, 25], [2, 3]], [[65, 30], [0, 5]], [[55, 40], [1, 4]]]
    assert score(first, [[0, 0], [100, 0]]) > score(second, [[0, 0], [0, 100]])


def test_a_resumed_job_scores_the_round_it_resumed_from_again_and_keeps_it_when_best(tmp_path):
    scenario = load_scenario(REPO / "scenarios" / "smoke.yaml", [ROWS, "federation.rounds=3"])
    whole, tracker = run(tmp_path / "whole", ROWS, "federation.rounds=3", transport=ClaimsRound(favourite=2))
    weights = str(tmp_path / "round-2.safetensors")
    save_file(tracker.models[2], weights)
    logged = [record for record in whole_history(tracker, 3) if record.round_index <= 2]
    history = [replace(record, validation_accuracy=None) for record in logged]  # an older run's log
    point = ResumePoint(2, weights, None, "m-2", history)
    resumed, again = Recorder(), ClaimsRound(favourite=2)
    paths = JobPaths.under(tmp_path / "resumed" / "jobs", "job")
    try:
        result = Coordinator(scenario, "job", again, resumed, paths, resume=point).run()
    finally:
        release_participants()
    assert whole.kept_round == 2 and result.kept_round == 2 and resumed.registered == "m-2"
    assert resumed.tags[None]["fedsilo.kept_round"].startswith("2 (best")
    assert again.asked_validation == [True, True]  # round 2 scored again on validation, then 3
    assert result.final_accuracy == pytest.approx(tracker.rounds[2]["global_accuracy"])


def whole_history(tracker: Recorder, rounds: int) -> list[RoundRecord]:
    """The round records an uninterrupted job's tracker would give a resumed one."""
    return [
        RoundRecord(
            r,
            rounds,
            tracker.rounds[r]["global_accuracy"],
            validation_accuracy=tracker.rounds[r].get("global_validation_accuracy"),
        )
        for r in range(rounds + 1)
    ]


def test_under_dp_sgd_the_schedule_counts_the_noised_training_count_its_steps_come_from():
    overrides = ["privacy.dp.target_epsilon=4", "federation.learning_rate_schedule=linear"]
    scenario = load_scenario(REPO / "scenarios" / "smoke.yaml", overrides)
    try:
        member = participant(scenario, "clinic-a")
        settings = member.on_course(member.settings(1, None), 1)
        assert member.num_examples != len(member.train)  # noised
        per_round = -(-member.num_examples // scenario.federation.batch_size)
        assert settings.schedule.total == scenario.federation.rounds * per_round
    finally:
        release_participants()
