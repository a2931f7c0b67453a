"""Recurring retraining: warm start from the champion, and a worse candidate never takes the alias."""

import pytest
from mlflow import MlflowClient

from fedsilo.pretrain import pretrain_cnn
from fedsilo.scenario import load_scenario
from fedsilo.tracking import compare, silo_matrices
from tests.conftest import REPO, shared_file
from tests.test_flow import run_cli, run_flow

IMAGING = REPO / "scenarios" / "medical-imaging.yaml"


@pytest.mark.slow
def test_second_run_warm_starts_from_the_champion_and_a_worse_candidate_does_not_take_it(
    prefect_server, mlflow_store, tmp_path
):
    npz = shared_file("pneumoniamnist", "pneumoniamnist.npz")
    checkpoint = pretrain_cnn(tmp_path / "cnn.safetensors", epochs=2)
    common = [f"data.source.path={npz}", f"model.source={checkpoint.path}", "retraining.warm_start=true"]
    first = run_flow(load_scenario(IMAGING, common, rounds=2))
    assert first.champion and first.registered_version == "1"

    # worse, and still finite (a much larger rate diverges to NaN, whose updates are refused)
    worse_on_purpose = ["federation.optimizer=sgd", "federation.learning_rate=0.3"]
    second = run_flow(load_scenario(IMAGING, common + worse_on_purpose, rounds=1))
    # round 0 of the second job is the first job's champion, scored on the same test splits
    assert second.initial_accuracy == pytest.approx(first.final_accuracy, abs=1e-9)
    assert second.final_accuracy < first.final_accuracy
    assert not second.champion and second.registered_version == "2"
    assert "< champion v1" in second.champion_reason and "champion kept" in second.champion_reason

    client = MlflowClient(mlflow_store)
    assert client.get_model_version_by_alias("medical-imaging-global", "champion").version in (1, "1")
    run = client.get_run(second.parent_run_id)
    assert run.data.tags["fedsilo.warm_start"] == "champion medical-imaging-global v1"
    first_run = client.get_run(first.parent_run_id)
    assert first_run.data.tags["fedsilo.warm_start"] == "pretrained model (no champion registered yet)"

    (matrix,) = silo_matrices("medical-imaging", jobs=1).values()
    locals_ = [f"{s} (local)" for s in ("hospital-a", "hospital-b", "hospital-c")]
    assert list(matrix.index) == [*locals_, "global", "alone"]
    assert list(matrix.columns) == ["hospital-a", "hospital-b", "hospital-c"]
    assert matrix.loc["global"].tolist() == pytest.approx(
        [client.get_metric_history(r, "global_accuracy")[-1].value for r in _silo_runs(client, run)]
    )
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "plots")]
    assert "plots/silo_matrix.png" in artifacts

    table = compare("medical-imaging", jobs=2)
    assert len(table) == 2 * 4 and set(table["job"]) == {first.job}  # 3 silos + all, both jobs
    printed = run_cli("compare", "medical-imaging", "--jobs", "2", cwd=tmp_path)
    assert printed.returncode == 0 and printed.stdout.count("hospital-c (local)") == 2


def _silo_runs(client: MlflowClient, parent) -> list[str]:
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    return [r.info.run_id for r in sorted(children, key=lambda r: r.data.tags["fedsilo.silo"])]
