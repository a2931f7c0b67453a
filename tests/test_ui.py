"""End to end in a real headless browser: the Prefect UI starts the smoke deployment from its Run
form, the run completes, and the MLflow UI shows the experiment. Screenshots land in the test's
folder (kept under pytest's basetemp) for a person to look at.

Needs Debian's chromium (`apt-get install chromium`; .ci/run installs it when it can) and the
`playwright` package (a dev dependency); Playwright drives the system browser, it downloads none.
"""

import re
import time

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.conftest import REPO
from tests.stack import BIN, start, stop
from tests.test_serve import wait_for_deployment, wait_for_run


def wait_for_submitted(client, job_name: str, seconds: float = 60):
    """The flow run that the form created, found by the job_name typed into it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for run in client.read_flow_runs():
            if run.parameters.get("job_name") == job_name:
                return run
        time.sleep(1)
    raise TimeoutError(job_name)


pytestmark = pytest.mark.slow


def field(page, label: str):
    """The input of a schema-form property, by its label (the innermost property that has it)."""
    header = page.get_by_text(label, exact=True)
    return page.locator(".schema-form-property", has=header).last.locator("input, textarea").first


def test_run_from_the_prefect_ui_then_see_it_in_mlflow(stack, page, tmp_path):
    server = start(
        [str(BIN / "fedsilo"), "serve", str(REPO / "scenarios" / "smoke.yaml")],
        tmp_path / "serve.log",
        stack.env,
        cwd=tmp_path,
    )
    ui = stack.prefect_api.removesuffix("/api")
    try:
        with temporary_settings({PREFECT_API_URL: stack.prefect_api}), get_client(sync_client=True) as client:
            wait_for_deployment(client, "federated-training/smoke", server)
        page.goto(f"{ui}/deployments")
        page.get_by_placeholder("Search deployments").fill("smoke")  # other tests' deployments too
        page.get_by_role("link", name="smoke", exact=True).first.click()
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_text("Custom run").first.click()
        page.get_by_text("Rounds (Optional)", exact=True).wait_for()
        rounds = field(page, "Rounds (Optional)")
        rounds.fill("1")
        job_name = field(page, "job_name (Optional)")
        job_name.fill("from-the-ui")
        page.screenshot(path=str(tmp_path / "1-run-form.png"), full_page=True)
        page.get_by_role("button", name="Submit").click()

        page.wait_for_url(re.compile(r".*/deployments/deployment/.*tab=Runs"), timeout=30_000)
        with temporary_settings({PREFECT_API_URL: stack.prefect_api}), get_client(sync_client=True) as client:
            run = wait_for_submitted(client, "from-the-ui")  # the server may hold other tests' runs
            state = wait_for_run(client, run.id)
        assert state.is_completed(), (tmp_path / "serve.log").read_text()[-3000:]
        page.reload()
        page.get_by_role("link", name=run.name).wait_for()
        page.screenshot(path=str(tmp_path / "2-deployment-run-completed.png"), full_page=True)
        page.goto(f"{ui}/runs/flow-run/{run.id}")
        page.get_by_text("Completed").first.wait_for()
        page.get_by_text("Artifacts", exact=True).first.click()
        page.get_by_text("smoke-rounds").first.wait_for()  # the round table, as a markdown artifact
        page.screenshot(path=str(tmp_path / "3-flow-run-artifacts.png"), full_page=True)
    finally:
        stop(server)

    from mlflow import MlflowClient

    client = MlflowClient(stack.mlflow_uri)
    experiment = client.get_experiment_by_name("smoke")
    (run,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'from-the-ui'")
    assert run.data.params["federation.rounds"] == "1"  # the value typed into the form
    page.goto(f"{stack.mlflow_uri}/#/experiments/{experiment.experiment_id}/runs")
    page.get_by_text("from-the-ui").first.wait_for(timeout=60_000)
    page.screenshot(path=str(tmp_path / "4-mlflow-experiment.png"), full_page=True)
