import subprocess
import sys
from pathlib import Path

import pytest

from fedsilo.scenario import (
    Scenario,
    ScenarioError,
    apply_override,
    changed_fields,
    flatten,
    load_scenario,
    validate_scenario,
)
from fedsilo.strategies import BUILTIN, FedAdamSettings, FedAvgMSettings, FedAvgSettings

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "scenarios").glob("*.yaml"))

MINIMAL = {"name": "t", "domain": "medical", "model": {"kind": "bert"}, "silos": [{"name": "a"}]}


def test_the_five_scenarios_ship():
    names = {p.stem for p in SHIPPED}
    assert {"medical", "finance", "telecom", "medical-imaging", "smoke"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_scenario_is_valid_and_says_how_to_run_it(path):
    scenario = load_scenario(path)
    assert path.read_text().startswith("# Run: ") and path.name in path.read_text().splitlines()[0]
    assert scenario.name == path.stem
    assert len(scenario.silos) >= 2


def test_defaults_fill_in_and_names_derive():
    scenario = validate_scenario(MINIMAL)
    assert scenario.experiment_name == "t"
    assert scenario.registered_model_name == "t-global"
    assert scenario.min_silos == 1
    assert scenario.data.partition.kind == "natural"


def test_validate_reports_every_problem_with_its_field_path(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndomain: medical\nmodel: {kind: bert}\nfederation: {rounds: many}\ncolour: red\n")
    run = subprocess.run(
        [sys.executable, "-m", "fedsilo.cli", "validate", str(bad)], capture_output=True, text=True
    )
    assert run.returncode == 2
    assert "federation.rounds" in run.stderr and "'many'" in run.stderr
    assert "colour: unknown key" in run.stderr
    assert "silos: required field is missing" in run.stderr
    assert "Traceback" not in run.stderr + run.stdout


def test_closed_lists_name_the_bad_value():
    raw = {**MINIMAL, "federation": {"strategy": "my.module.Strategy"}, "model": {"kind": "gpt"}}
    with pytest.raises(ScenarioError) as error:
        validate_scenario(raw)
    text = "\n".join(error.value.problems)
    assert "federation.strategy" in text and "my.module.Strategy" in text
    assert "model.kind" in text


def test_cross_field_rules():
    with pytest.raises(ScenarioError, match="min_silos is 3"):
        validate_scenario({**MINIMAL, "federation": {"min_silos": 3}})
    with pytest.raises(ScenarioError, match="unique"):
        validate_scenario({**MINIMAL, "silos": [{"name": "a"}, {"name": "a"}]})
    assert validate_scenario({**MINIMAL, "model": {"kind": "bert", "lora": True}}).model.lora.r == 8
    assert validate_scenario({**MINIMAL, "model": {"kind": "bert", "lora": False}}).model.lora is None
    with pytest.raises(ScenarioError, match="model.lora applies to model.kind 'bert'"):
        validate_scenario({**MINIMAL, "model": {"kind": "cnn", "lora": {"r": 4}}})
    warm_lora = {**MINIMAL, "model": {"kind": "bert", "lora": {}}, "retraining": {"warm_start": True}}
    assert validate_scenario(warm_lora).retraining.warm_start  # it goes on from the champion's adapters
    with pytest.raises(ScenarioError, match="needs image data"):
        validate_scenario({**MINIMAL, "model": {"kind": "cnn"}})


def test_overrides_parse_values_as_yaml_and_reach_lists():
    raw = {**MINIMAL, "silos": [{"name": "a"}, {"name": "b"}]}
    apply_override(raw, "federation.rounds=3")
    apply_override(raw, "silos.1.name=clinic")
    apply_override(raw, "data.source={kind: generated, rows_per_silo: 10}")
    scenario = validate_scenario(raw)
    assert scenario.federation.rounds == 3
    assert scenario.silo_names() == ["a", "clinic"]
    assert scenario.data.source.rows_per_silo == 10
    with pytest.raises(ScenarioError, match="FIELD.PATH=VALUE"):
        apply_override(raw, "rounds")


def test_rounds_flag_and_flatten(tmp_path):
    scenario = load_scenario(REPO / "scenarios" / "smoke.yaml", ["federation.seed=5"], rounds=7)
    flat = flatten(scenario)
    assert flat["federation.rounds"] == "7" and flat["federation.seed"] == "5"
    assert flat["silos.0.name"] == "clinic-a"


def test_yaml_syntax_error_names_the_line(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nsilos: [a\n")
    with pytest.raises(ScenarioError, match="line"):
        load_scenario(broken)


def strategy_of(federation: dict, *overrides: str):
    raw = {**MINIMAL, "federation": federation}
    for assignment in overrides:
        apply_override(raw, assignment)
    return validate_scenario(raw).federation.strategy


def problems(federation: dict, *overrides: str) -> str:
    with pytest.raises(ScenarioError) as error:
        strategy_of(federation, *overrides)
    return "\n".join(error.value.problems)


def test_the_strategy_is_a_settings_record_written_as_a_name_or_a_mapping():
    assert strategy_of({}) == FedAvgSettings()
    assert strategy_of({"strategy": "fedadam"}) == FedAdamSettings()
    record = strategy_of({"strategy": {"name": "fedadam", "beta1": 0.8}})
    assert record == FedAdamSettings(beta1=0.8) and record.name == "fedadam"
    assert strategy_of({"strategy": {"server_learning_rate": 0.5}}) == FedAvgSettings(
        server_learning_rate=0.5
    )


def test_flat_settings_of_older_scenarios_fold_into_the_record():
    assert strategy_of({"strategy": "fedavgm", "server_momentum": 0.5}) == FedAvgMSettings(
        server_momentum=0.5
    )
    assert strategy_of({"server_learning_rate": 0.5}) == FedAvgSettings(server_learning_rate=0.5)
    text = problems({"strategy": "fedavg", "server_momentum": 0.5})
    assert "federation.strategy: server_momentum is set but strategy 'fedavg' does not use it" in text
    assert "twice" in problems({"strategy": {"name": "fedadam", "beta1": 0.8}, "beta1": 0.9})
    recorded = {"strategy": "fedprox", "proximal_mu": 0.1, "server_momentum": None, "beta1": None}
    assert strategy_of(recorded).proximal_mu == 0.1  # jobs recorded before: unset settings were null


def test_a_setting_of_another_strategy_names_both():
    text = problems({"strategy": {"name": "fedadagrad", "beta2": 0.9}})
    assert "beta2 is set but strategy 'fedadagrad' does not use it (it reads: server_learning_rate" in text
    assert "federation.strategy.colour: unknown key" in problems(
        {"strategy": {"name": "fedavg", "colour": 1}}
    )


@pytest.mark.parametrize(
    ("record", "named"),
    [
        (
            {"name": "fedavgm", "server_momentum": 1.0},
            "federation.strategy.server_momentum: Input should be less",
        ),
        (
            {"name": "fedadam", "beta2": -0.1},
            "federation.strategy.beta2: Input should be greater than or equal",
        ),
        ({"name": "fedyogi", "tau": 0}, "federation.strategy.tau: Input should be greater than 0"),
        (
            {"name": "trimmed_mean", "trim_fraction": 0.5},
            "federation.strategy.trim_fraction: Input should be less",
        ),
        (
            {"name": "fedavg", "server_learning_rate": float("inf")},
            "federation.strategy.server_learning_rate",
        ),
        ({"name": "fedsgd"}, "federation.strategy: unknown strategy 'fedsgd'; accepted: fedadagrad, fedadam"),
    ],
)
def test_limits_are_checked_with_the_fields_path(record, named):
    assert named in problems({"strategy": record})


def test_set_switches_the_strategy_or_one_of_its_settings():
    assert strategy_of(
        {}, "federation.strategy=fedadam", "federation.strategy.beta1=0.95"
    ) == FedAdamSettings(beta1=0.95)
    assert strategy_of({"strategy": "fedadam"}, "federation.strategy.beta1=0.95").beta1 == 0.95
    assert strategy_of({}, "federation.strategy.server_learning_rate=0.5").server_learning_rate == 0.5
    recorded = {"strategy": {"name": "fedadam", "beta1": 0.8}}  # a recorded job holds the whole record
    assert strategy_of(recorded, "federation.strategy=fedyogi").beta1 == 0.9  # a new strategy: its defaults
    assert strategy_of({}, "federation.strategy=fedprox", "federation.proximal_mu=0").proximal_mu == 0
    assert "proximal_mu is set but strategy 'fedavg'" in problems({}, "federation.proximal_mu=0.1")


def test_a_strategy_record_flattens_to_its_set_paths_and_round_trips():
    scenario = load_scenario(
        REPO / "scenarios" / "smoke.yaml", ["federation.strategy={name: fedyogi, beta1: 0.8}"]
    )
    flat = flatten(scenario)
    assert flat["federation.strategy"] == "fedyogi" and flat["federation.strategy.beta1"] == "0.8"
    assert "federation.strategy.name" not in flat and "federation.beta1" not in flat
    again = Scenario.model_validate_json(scenario.model_dump_json())
    assert again.federation.strategy == scenario.federation.strategy
    other = load_scenario(REPO / "scenarios" / "smoke.yaml", ["federation.strategy=fedyogi"])
    assert changed_fields(other, scenario) == [("federation.strategy.beta1", "0.9", "0.8")]


def test_the_prefect_run_form_shows_each_strategys_fields_with_their_limits():
    from prefect.utilities.callables import parameter_schema

    def federated_training(scenario: Scenario, job_name: str = "") -> None:
        """A stand-in with the flow's parameters."""

    schema = parameter_schema(federated_training).model_dump()
    definitions = schema["definitions"]
    strategy = definitions["FederationSpec"]["properties"]["strategy"]
    built_in = {cls.name for cls in BUILTIN}
    assert set(strategy["discriminator"]["mapping"]) == built_in  # the form lists fedsilo's own
    by_name = {definitions[ref["$ref"].split("/")[-1]]["title"]: ref for ref in strategy["oneOf"]}
    assert set(by_name) == built_in
    adam = definitions["FedAdamSettings"]["properties"]
    assert adam["name"]["const"] == "fedadam"
    assert adam["beta1"] == {**adam["beta1"], "default": 0.9, "minimum": 0, "exclusiveMaximum": 1}
    assert adam["server_learning_rate"]["default"] == 0.01 and adam["tau"]["exclusiveMinimum"] == 0
    assert definitions["TrimmedMeanSettings"]["properties"]["trim_fraction"]["exclusiveMaximum"] == 0.5
    assert "beta2" not in definitions["FedAdagradSettings"]["properties"]
