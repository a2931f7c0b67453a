"""Is joining worth it, silo by silo: every job trains each silo's alone model, each silo keeps
the best of the global, personalized and alone models on its own validation rows, and the
figures reach the tracker. Real (tiny) models on the smoke scenario's generated rows."""

import pytest

from fedsilo.engine.keeping import kept_problem
from fedsilo.engine.recording import kept_table
from fedsilo.messages import Evaluation, Kept
from fedsilo.privacy.pending import state_folder
from fedsilo.steps import Keep
from fedsilo.transport import InProcess
from tests.engine import run

ROWS = "data.source.rows_per_silo=120"  # enough rows for a validation split of 10%


class Capturing(InProcess):
    """Real in-process silos; every Keep reply is kept."""

    def __init__(self):
        super().__init__()
        self.kept: dict[str, Kept] = {}
        self.kinds: list[str] = []

    def ask(self, scenario, step, silos):
        self.kinds.append(step.kind)
        answers = super().ask(scenario, step, silos)
        if isinstance(step, Keep):
            self.kept.update(answers.replies)
        return answers


@pytest.fixture(autouse=True)
def own_state(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSILO_SILO_STATE", str(tmp_path / "state"))


def test_every_silo_reports_alone_kept_and_the_gain_and_never_keeps_worse_than_alone(tmp_path):
    silos = Capturing()
    result, tracker = run(
        tmp_path, ROWS, "federation.rounds=1", "evaluation.personalize_steps=3", transport=silos
    )
    assert set(silos.kept) == {"clinic-a", "clinic-b"}
    assert "personalize" not in silos.kinds  # each silo fine-tunes once, in its keep step
    for silo, report in silos.kept.items():
        assert set(report.validation) == {"global", "personalized", "alone"}
        assert result.personalized[silo] == pytest.approx(report.personalized.accuracy)
        assert report.validation[report.kept] >= report.validation["alone"]  # the guarantee
        figures = {key: values[1] for key, values in tracker.silos[silo].items()}
        assert figures["alone_accuracy"] == pytest.approx(report.alone.accuracy)
        assert figures["gain_from_joining"] == pytest.approx(
            figures["kept_accuracy"] - figures["alone_accuracy"]
        )
        assert tracker.tags[silo]["fedsilo.kept_model"] == report.kept
        assert result.kept[silo] == report.kept and result.alone_accuracy[silo] == pytest.approx(
            report.alone.accuracy
        )
    job = tracker.rounds[1]
    assert job["gain_from_joining"] == pytest.approx(job["kept_accuracy"] - job["alone_accuracy"])
    assert "alone" in list(tracker.matrix.index)
    table = kept_table(result)  # the Prefect artifact's closing table
    for silo, choice in result.kept.items():
        gain = 100 * (result.kept_accuracy[silo] - result.alone_accuracy[silo])
        assert f"| {silo} | {choice} | {100 * result.kept_accuracy[silo]:.1f}% |" in table
        assert f"{gain:+.1f} points |" in table


@pytest.mark.parametrize(
    ("validation", "kept"),
    [("evaluation.validation_fraction=0.1", "alone"), ("evaluation.validation_fraction=0", "global")],
)
def test_a_silo_too_small_for_a_validation_split_keeps_its_alone_model(tmp_path, validation, kept):
    """30 training rows hold out 3 for validation, under the 4 a split needs: nothing shows a model
    from joining does better, so the silo keeps its alone model; validation off keeps the global."""
    silos = Capturing()
    result, tracker = run(tmp_path, "federation.rounds=1", validation, transport=silos)
    for silo, report in silos.kept.items():
        assert report.kept == kept and report.validation == {} and report.note
        assert tracker.tags[silo]["fedsilo.kept_model"] == kept
        if kept == "alone":  # the kept model's test score is the alone model's
            assert result.kept_accuracy[silo] == pytest.approx(result.alone_accuracy[silo])


def test_the_alone_model_is_reused_while_rows_model_and_budget_are_unchanged(tmp_path):
    first, second, longer = Capturing(), Capturing(), Capturing()
    run(tmp_path / "a", ROWS, "federation.rounds=1", transport=first)
    run(tmp_path / "b", ROWS, "federation.rounds=1", transport=second)
    run(tmp_path / "c", ROWS, "federation.rounds=2", transport=longer)  # a larger budget: retrained
    assert not first.kept["clinic-a"].alone_reused and second.kept["clinic-a"].alone_reused
    assert second.kept["clinic-a"].alone == first.kept["clinic-a"].alone
    assert not longer.kept["clinic-a"].alone_reused
    assert len(list(state_folder("clinic-a").glob("alone-*.safetensors"))) == 2


def test_under_dp_a_silo_keeps_the_global_model_and_trains_nothing_else(tmp_path):
    silos = Capturing()
    run(tmp_path, ROWS, "federation.rounds=1", "privacy.dp.target_epsilon=8", transport=silos)
    for report in silos.kept.values():
        assert report.kept == "global" and report.alone is None and "privacy.dp" in report.note


def _evaluation(silo="clinic-a", correct=8):
    return Evaluation(silo, 0.8, 0.8, 0.5, [[correct, 10 - correct], [0, 0]])


def test_a_report_that_keeps_a_worse_model_or_claims_more_test_rows_is_refused():
    honest = Kept("clinic-a", "global", {"global": 0.9, "alone": 0.7}, _evaluation(), _evaluation())
    assert kept_problem(honest, 2, 10) is None
    worse = Kept("clinic-a", "alone", {"global": 0.9, "alone": 0.7}, _evaluation(), _evaluation())
    assert "not its best candidate" in kept_problem(worse, 2, 10)
    inflated = Kept(
        "clinic-a", "global", {"global": 0.9}, Evaluation("clinic-a", 1, 1, 0.1, [[10**6, 0], [0, 0]])
    )
    assert "kept model's test scores" in kept_problem(inflated, 2, 10)
    assert "between 0 and 1" in kept_problem(
        Kept("clinic-a", "global", {"global": 7.0}, _evaluation()), 2, 10
    )
    assert "none of" in kept_problem(Kept("clinic-a", "champion", {}, _evaluation()), 2, 10)


def test_a_model_from_joining_must_beat_the_alone_model_to_be_kept():
    from fedsilo.keeping import chosen

    assert chosen({"global": 0.75, "personalized": 0.75, "alone": 0.75}) == "alone"  # a tie proves nothing
    assert chosen({"global": 0.75, "personalized": 0.75, "alone": 0.5}) == "personalized"
    assert chosen({"global": 0.8125, "personalized": 0.75, "alone": 0.75}) == "global"
    assert chosen({"global": 0.9}) == "global"
