"""Screening and settling: checksums on exchanged updates, label agreement, quorum."""

import pytest
import torch

from fedsilo.engine.aggregation import UpdateRules
from fedsilo.engine.screening import Outcome, check_quorum, screen_summaries
from fedsilo.engine.start import settle_data
from fedsilo.errors import FederationError
from fedsilo.messages import DataSummary, Evaluation, FitReport
from fedsilo.scenario import load_scenario, validate_scenario
from fedsilo.strategies import FedAvg
from fedsilo.weights import read_state, write_state
from tests.conftest import REPO
from tests.engine import aggregate


def report(silo: str, ref, n: int) -> FitReport:
    local = Evaluation(silo, 1.0, 1.0, 0.0, [[1]])
    return FitReport(silo, 1, ref, n, 0.1, local, 1.0)


def test_an_update_that_fails_its_checksum_is_left_out_of_the_average(tmp_path):
    current = write_state({"w": torch.zeros(3)}, str(tmp_path / "global.safetensors"))
    good = write_state({"w": torch.full((3,), 2.0)}, str(tmp_path / "a.safetensors"))
    bad = write_state({"w": torch.full((3,), 100.0)}, str(tmp_path / "b.safetensors"))
    (tmp_path / "b.safetensors").write_bytes(b"tampered")
    replies = [report("a", good, 1), report("b", bad, 1)]
    out, rejected = aggregate(FedAvg(), current, replies, tmp_path, UpdateRules({"a": 1, "b": 1}))
    assert list(rejected) == ["b"] and "sha256" in rejected["b"] and "b.safetensors" in rejected["b"]
    assert torch.equal(read_state(out)["w"], torch.full((3,), 2.0))  # a alone, not a and b


def test_labels_come_from_what_silos_report_when_the_scenario_names_none(tmp_path):
    raw = {
        "name": "t",
        "domain": "medical",
        "model": {"kind": "bert", "source": "tiny-random"},
        "data": {"source": {"kind": "csv", "path": "x.csv"}, "partition": {"kind": "iid"}},
        "silos": [{"name": "a"}, {"name": "b"}],
    }
    scenario = validate_scenario(raw)
    summaries = [DataSummary("a", {"10": 3, "2": 1}, {"2": 1}), DataSummary("b", {"yes": 2}, {"1": 1})]
    assert settle_data(scenario, summaries)[0].data.labels == [
        "yes",
        "1",
        "2",
        "10",
    ]  # numbers as numbers
    named = validate_scenario(raw | {"data": raw["data"] | {"labels": ["z", "y"]}})
    assert settle_data(named, summaries)[0] is named


def summary(silo: str, shape: tuple[int, ...]) -> DataSummary:
    return DataSummary(silo, {"x": 3}, {"x": 1}, input_shape=shape)


def test_a_silo_whose_images_differ_from_the_majoritys_is_refused_and_a_tie_named():
    shapes = {"a": (1, 28, 28), "b": (1, 28, 28), "c": (3, 28, 28)}
    outcome = Outcome({silo: summary(silo, shape) for silo, shape in shapes.items()})
    screen_summaries(outcome)
    assert sorted(outcome.replies) == ["a", "b"] and "(3, 28, 28)" in outcome.refused["c"]
    tie = Outcome({"a": summary("a", (1, 28, 28)), "b": summary("b", (3, 28, 28))})
    with pytest.raises(FederationError, match=r"a \(1, 28, 28\), b \(3, 28, 28\)"):
        screen_summaries(tie)


def test_a_data_description_with_impossible_counts_is_refused():
    outcome = Outcome({"a": DataSummary("a", {"x": -1}, {"x": 2}), "b": DataSummary("b", {"x": 3}, {})})
    screen_summaries(outcome)
    assert "non-negative" in outcome.refused["a"] and "no test examples" in outcome.refused["b"]


def test_below_min_silos_the_message_names_the_missing_ones():
    scenario = load_scenario(REPO / "scenarios" / "smoke.yaml")
    check_quorum(scenario, ["clinic-a", "clinic-b"], "round 1")
    with pytest.raises(FederationError, match="round 2: only 1 of 2 silos answered .* missing: clinic-b"):
        check_quorum(scenario, ["clinic-a"], "round 2")


def test_a_silo_with_labels_the_scenario_does_not_name_declines_at_prepare():
    from fedsilo.errors import SiloDeclined
    from fedsilo.silo import summarize

    named = load_scenario(REPO / "scenarios" / "smoke.yaml", ["data.labels=[cardiology, neurology]"])
    with pytest.raises(SiloDeclined, match="gastroenterology.*data.labels does not name"):
        summarize(named, "clinic-a")
    assert summarize(load_scenario(REPO / "scenarios" / "smoke.yaml"), "clinic-a").num_train == 30
