import subprocess
import sys
from pathlib import Path

import pytest

from fedsilo.scenario import ScenarioError, apply_override, flatten, load_scenario, validate_scenario

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
