"""`fedsilo serve` against a real Prefect server: a deployment per scenario, triggered through the API."""

import copy
import time

import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.conftest import REPO
from tests.stack import BIN, start, stop

pytestmark = pytest.mark.slow


def wait_for_deployment(client, name: str, server, seconds: float = 120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            return client.read_deployment_by_name(name)
        except ObjectNotFound:
            assert server.poll() is None, "fedsilo serve exited"
            time.sleep(1)
    raise TimeoutError(name)


def wait_for_run(client, run_id, seconds: float = 300):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state = client.read_flow_run(run_id).state
        if state and state.is_final():
            return state
        time.sleep(1)
    raise TimeoutError(str(run_id))


def test_served_deployment_runs_with_a_parameter_changed_through_the_api(stack, tmp_path):
    scenarios = [str(REPO / "scenarios" / name) for name in ("smoke.yaml", "medical.yaml")]
    server = start(
        [str(BIN / "fedsilo"), "serve", *scenarios], tmp_path / "serve.log", stack.env, cwd=tmp_path
    )
    try:
        with temporary_settings({PREFECT_API_URL: stack.prefect_api}), get_client(sync_client=True) as client:
            smoke = wait_for_deployment(client, "federated-training/smoke", server)
            medical = wait_for_deployment(client, "federated-training/medical", server)
            assert [s.schedule.cron for s in medical.schedules] == ["0 6 * * 1"]  # from the scenario file
            assert not smoke.schedules
            schema = smoke.parameter_openapi_schema
            assert "scenario" in schema["required"]
            rounds = schema["definitions"]["FederationSpec"]["properties"]["rounds"]
            assert rounds["default"] == 5 and rounds["minimum"] == 1  # the form keeps the constraints
            federation = schema["definitions"]["FederationSpec"]["properties"]
            assert (
                federation["mode"]["enum"] == ["embedded", "distributed"]
                and federation["mode"]["description"]
            )
            strategies = set(federation["strategy"]["discriminator"]["mapping"])
            assert {"fedavg", "fedprox", "fedyogi", "median", "trimmed_mean", "scaffold"} <= strategies
            assert federation["personal_layers"]["description"]  # issue 22's options are on the form
            evaluation = schema["definitions"]["EvaluationSpec"]["properties"]
            assert evaluation["personalization"]["enum"] == ["finetune", "ditto"]
            beta1 = schema["definitions"]["FedAdamSettings"]["properties"]["beta1"]  # with its limits
            assert beta1["minimum"] == 0 and beta1["exclusiveMaximum"] == 1 and beta1["description"]
            assert "<" not in schema["properties"]["job_name"]["description"]  # the UI eats <...> as HTML

            parameters = copy.deepcopy(smoke.parameters)
            assert parameters["scenario"]["federation"]["rounds"] == 2
            parameters["scenario"]["federation"] |= {
                "rounds": 1,
                "strategy": {"name": "scaffold", "local_learning_rate": 0.05},
                "personal_layers": ["classifier.*"],
            }
            parameters["scenario"]["evaluation"] |= {"personalization": "ditto"}
            run = client.create_flow_run_from_deployment(
                smoke.id, parameters=parameters | {"job_name": "served"}
            )
            state = wait_for_run(client, run.id)
        assert state.is_completed(), (tmp_path / "serve.log").read_text()[-4000:]
    finally:
        stop(server)

    client = MlflowClient(stack.mlflow_uri)
    (job,) = client.search_runs(
        [client.get_experiment_by_name("smoke").experiment_id], "attributes.run_name = 'served'"
    )
    assert job.data.params["federation.rounds"] == "1"
    assert (
        job.data.params["federation.strategy"] == "scaffold"
        and job.data.params["federation.strategy.local_learning_rate"] == "0.05"
        and job.data.params["federation.personal_layers"] == "['classifier.*']"
        and job.data.params["evaluation.personalization"] == "ditto"
    )
    assert 0 <= job.data.metrics["personalized_accuracy"] <= 1  # each silo's Ditto model, scored
    assert [m.step for m in client.get_metric_history(job.info.run_id, "global_accuracy")] == [0, 1]
