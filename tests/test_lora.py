"""LoRA through peft: silos exchange adapters and the head; the registered model is merged."""

import pytest
import torch

from fedsilo.modeling import build_model, load_shared, plain_spec
from fedsilo.records import ADAPTER
from fedsilo.scenario import load_scenario
from tests.conftest import REPO
from tests.engine import run
from tests.test_differential_privacy import Keeping

LORA = "model.lora={r: 4, alpha: 8, dropout: 0.0}"
FAST = "federation.learning_rate=1e-2"  # adapters start at zero: a tiny model needs a push to move


@pytest.fixture(autouse=True)
def silo_state(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSILO_SILO_STATE", str(tmp_path / "silo-state"))


def test_silos_exchange_adapters_and_the_aggregate_is_fedavg_over_them(tmp_path):
    silos = Keeping()
    _, tracker = run(tmp_path, LORA, FAST, transport=silos)
    sent = silos.updates[(1, "clinic-a")]
    assert all("lora_" in name or "classifier" in name for name in sent)
    global_adapter = tracker.extra_tensors[1][ADAPTER]
    assert set(global_adapter) == set(sent)
    for name, tensor in global_adapter.items():  # both silos trained on 30 examples: the plain mean
        mean = (silos.updates[(1, "clinic-a")][name] + silos.updates[(1, "clinic-b")][name]) / 2
        torch.testing.assert_close(tensor, mean, rtol=0, atol=1e-7, msg=name)
    assert any(not torch.equal(t, tracker.extra_tensors[0][ADAPTER][n]) for n, t in global_adapter.items())
    _, full = run(tmp_path / "full", FAST)
    assert full.rounds[1]["bytes_exchanged"] >= 100 * tracker.rounds[1]["bytes_exchanged"]
    assert tracker.meta["model"]["lora"] is None and tracker.meta["lora"]["r"] == 4


def test_the_logged_model_is_merged_and_predicts_as_the_encoder_with_its_adapters(tmp_path):
    _, tracker = run(tmp_path, LORA, FAST)
    scenario = load_scenario(REPO / "scenarios" / "smoke.yaml", [LORA])
    labels = len(tracker.meta["labels"])
    with_adapters = build_model(scenario.model, labels, (), scenario.federation.seed)
    load_shared(with_adapters, tracker.extra_tensors[2][ADAPTER])
    plain = build_model(plain_spec(scenario.model), labels, (), scenario.federation.seed)
    plain.load_state_dict(tracker.models[2])  # strict: the merged model is the plain architecture
    ids = torch.randint(5, 2000, (4, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = with_adapters.eval()(input_ids=ids).logits
        torch.testing.assert_close(plain.eval()(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)


def test_adapters_go_through_secure_aggregation_and_dp_unchanged(tmp_path):
    _, plain = run(tmp_path / "plain", LORA, FAST)
    _, secure = run(tmp_path / "secure", LORA, FAST, "privacy.secure_aggregation=true")
    for name, tensor in plain.extra_tensors[1][ADAPTER].items():
        torch.testing.assert_close(secure.extra_tensors[1][ADAPTER][name], tensor, rtol=0, atol=1e-6)
    _, private = run(tmp_path / "dp", LORA, FAST, "privacy.dp.target_epsilon=8")
    assert 0 < private.rounds[2]["max_silo_epsilon"] <= 8
    assert private.rounds[2]["bytes_exchanged"] == plain.rounds[2]["bytes_exchanged"]


@pytest.mark.slow
def test_finance_with_lora_on_minilm_registers_a_plain_model_and_warm_starts_from_its_adapters(
    tmp_path, monkeypatch
):
    """The packaged MiniLM through `fedsilo run`: adapters cross, the merged model is served."""
    import mlflow
    from mlflow import MlflowClient

    from tests.test_flow import run_cli

    finance = str(REPO / "scenarios" / "finance.yaml")
    first = run_cli("run", finance, "--set", "model.lora.r=8", "--rounds", "2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Started from the pretrained model" in first.stdout or "now the champion" in first.stdout
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("finance")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`fedsilo.role` = 'federation'")
    exchanged = client.get_metric_history(parent.info.run_id, "bytes_exchanged")[-1].value
    version = client.get_model_version_by_alias("finance-global", "champion")
    full_round = 2 * 3 * 90_000_000  # MiniLM's full state out to 3 banks and back: about 90 MB each way
    assert exchanged * 100 <= full_round, exchanged
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    model = mlflow.pyfunc.load_model("models:/finance-global@champion")
    predictions = model.predict(["my card was stolen yesterday", "the transfer to my landlord failed"])
    assert len(predictions) == 2 and all(isinstance(p, str) for p in predictions)

    second = run_cli("run", finance, "--set", "model.lora.r=8", "--rounds", "1", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    runs = client.search_runs(
        [experiment.experiment_id],
        "tags.`fedsilo.role` = 'federation'",
        order_by=["attributes.start_time DESC"],
    )
    assert runs[0].data.tags["fedsilo.warm_start"] == f"champion finance-global v{version.version}"
