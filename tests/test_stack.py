"""docker/compose.yaml brought up for real with podman-compose: PostgreSQL, Prefect and MLflow
behind auth, `fedsilo serve` as the coordinator, a worker container per silo of the smoke
scenario with only its own data volume and its own key volume, enrolled by the stack's set-up;
the job runs signed, and its audit trail checks against the roster. One stack for the module;
torn down at the end.

Needs podman, runc and debootstrap (`make system-deps`); skips, saying why, without them.
"""

import json
import re
import subprocess
import time
from functools import partial
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tests.containers import (
    PROJECT,
    SERVICES,
    SILOS,
    ComposeStack,
    build_postgres_image,
    podman,
    status,
    wait_for,
)
from tests.stack import BIN

pytestmark = pytest.mark.slow
PROBE = """
import socket, sys
for host in sys.argv[1:]:
    try:
        socket.create_connection((host, 5432), timeout=3)
        print("reached", host)
    except OSError as exc:
        print("refused", host, exc)
"""


@pytest.fixture(scope="module")
def compose_stack(fedsilo_image, silo_files, tmp_path_factory):
    build_postgres_image()
    stack = ComposeStack(tmp_path_factory.mktemp("compose"), fedsilo_image, silo_files)
    stack.compose("down", "--volumes", timeout=300)  # whatever an interrupted run left
    began = time.monotonic()
    stack.compose("up", "-d", timeout=900)
    try:
        wait_for(stack.prefect_healthy, "a Prefect API", diagnosis=stack.diagnosis)
        health = f"{stack.mlflow_uri}/health"
        wait_for(lambda: status(health) == 200, "an MLflow server", diagnosis=stack.diagnosis)
        clinic = f"clinic-a:{stack.secrets['MLFLOW_PASSWORD_CLINIC_A']}"
        smoke = f"{stack.mlflow_uri}/api/2.0/mlflow/experiments/get-by-name?experiment_name=smoke"
        users = partial(stack.diagnosis, ("mlflow", "mlflow-users"))
        wait_for(lambda: status(smoke, clinic) == 200, "the silos' MLflow users", diagnosis=users)

        def enrolled() -> bool:
            roster = yaml.safe_load(stack.roster() or "{}") or {}
            return bool(roster.get("coordinator")) and set(SILOS) <= set(roster.get("silos") or {})

        trust = partial(stack.diagnosis, ("coordinator-key", "enrol-smoke", *SILOS))
        wait_for(enrolled, "the coordinator's key and the silos enrolled in the roster", diagnosis=trust)
        yield stack
    finally:
        logs = {s: podman("logs", stack.container(s), check=False) for s in SERVICES}
        stack.compose("down", "--volumes", timeout=300)
        print(f"stack up and down in {time.monotonic() - began:.0f}s")
        for service, log in logs.items():
            print(f"--- {service}\n{(log.stdout + log.stderr)[-2000:]}")
    left = podman("ps", "--all", "--quiet", "--filter", f"label=io.podman.compose.project={PROJECT}")
    assert left.stdout.strip() == "", "compose down left containers behind"


def test_servers_refuse_requests_without_the_right_credentials(compose_stack):
    stack, search = compose_stack, b'{"max_results": 1}'
    runs = f"{stack.prefect_api}/flow_runs/filter"
    assert status(runs, method="POST", body=b"{}") == 401
    assert status(runs, "admin:wrong", method="POST", body=b"{}") == 401
    assert status(runs, stack.secrets["PREFECT_AUTH"], method="POST", body=b"{}") == 200

    experiments = f"{stack.mlflow_uri}/api/2.0/mlflow/experiments/search"
    admin = f"admin:{stack.secrets['MLFLOW_PASSWORD']}"
    assert status(experiments, method="POST", body=search) == 401
    assert status(experiments, "admin:wrong", method="POST", body=search) == 401
    assert status(experiments, admin, method="POST", body=search) == 200


def test_a_silo_container_holds_no_server_secret_and_cannot_reach_postgres(compose_stack):
    stack = compose_stack
    environment = podman("exec", stack.container("clinic-a"), "env").stdout
    for name in ("POSTGRES_PASSWORD", "MLFLOW_PASSWORD", "MLFLOW_SECRET_KEY", "MLFLOW_PASSWORD_CLINIC_B"):
        assert stack.secrets[name] not in environment, f"{name}'s value is inside clinic-a's container"
    assert stack.secrets["MLFLOW_PASSWORD_CLINIC_A"] in environment  # its own, and only its own

    address = podman(
        "inspect",
        stack.container("postgres"),
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
    ).stdout.split()
    probe = PROBE
    reached = podman(
        "exec", stack.container("clinic-a"), "python", "-c", probe, "postgres", *address, check=False
    ).stdout
    assert "reached" not in reached and "refused postgres" in reached, reached
    server = podman("exec", stack.container("mlflow"), "python", "-c", probe, "postgres", check=False).stdout
    assert "reached postgres" in server  # the servers do reach it: the probe itself works

    # keys: a silo's volume is mounted in its own container only, the coordinator's in the
    # coordinator's two; only the set-up writes the roster, and the enrolment holds public keys only
    mounts = {service: stack.mounts(service) for service in SERVICES}
    holders = lambda volume: sorted(s for s, found in mounts.items() if volume in found)  # noqa: E731
    for silo in SILOS:
        assert holders(f"{silo}-state") == [silo], mounts
    assert holders("coordinator-state") == ["coordinator-key", "serve"], mounts
    assert holders("roster") == sorted(["coordinator-key", "enrol-smoke", "serve", *SILOS]), mounts
    writers = sorted(s for s, found in mounts.items() if found.get("roster"))
    assert writers == ["coordinator-key", "enrol-smoke"], mounts
    keys = podman("exec", stack.container("clinic-a"), "find", "/var/lib/fedsilo", "-name", "identity.key",
                  "-perm", "600").stdout.split()  # fmt: skip
    assert keys == ["/var/lib/fedsilo/state/clinic-a/identity.key"]
    enrolment = podman("exec", stack.container("clinic-a"), "ls", "-A", "/var/lib/fedsilo/enrolment").stdout
    assert sorted(enrolment.split()) == sorted(f"{silo}.pub" for silo in SILOS)


def test_the_served_scenarios_have_their_schedules_and_a_signed_run_completes_through_the_silos(
    compose_stack, monkeypatch, tmp_path
):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    stack = compose_stack
    settings = {PREFECT_API_URL: stack.prefect_api, PREFECT_API_AUTH_STRING: stack.secrets["PREFECT_AUTH"]}
    with temporary_settings(settings), get_client(sync_client=True) as client:

        def registered() -> bool:
            return {"smoke", "medical", *SILOS} <= {d.name for d in client.read_deployments()}

        wait_for(registered, "the scenario and silo deployments")
        medical = client.read_deployment_by_name("federated-training/medical")
        assert [s.schedule.cron for s in medical.schedules] == ["0 6 * * 1"]
        smoke = client.read_deployment_by_name("federated-training/smoke")
        assert smoke.parameters["scenario"]["federation"]["mode"] == "distributed"

        run = run_deployment("federated-training/smoke", parameters={}, timeout=600)
        assert run.state.is_completed(), run.state.message

    for key, value in stack.client_env().items():
        monkeypatch.setenv(key, value)
    client = MlflowClient(stack.mlflow_uri)
    smoke = client.get_experiment_by_name("smoke")  # made by mlflow-users before any job ran
    assert smoke.tags["fedsilo.domain"] == "medical", smoke.tags
    experiment = smoke.experiment_id
    (job,) = client.search_runs([experiment], "tags.`fedsilo.role` = 'federation'")
    assert job.info.status == "FINISHED"
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{job.info.run_id}'")
    assert sorted(child.data.tags["fedsilo.silo"] for child in children) == list(SILOS)
    assert [m.step for m in client.get_metric_history(job.info.run_id, "global_accuracy")] == [0, 1, 2]
    roster = tmp_path / "roster.yaml"
    roster.write_text(stack.roster())
    pinned = yaml.safe_load(roster.read_text())
    for silo in SILOS:  # each silo read only its own file, and signed with the key it was enrolled with
        logs = podman("logs", stack.container(silo))
        log = logs.stdout + logs.stderr  # the worker's own lines on stdout, its job runs' on stderr
        assert "/data/notes.csv" in log and f"{silo} fit-round-2: served" in log
        key, coordinator = pinned["silos"][silo]["public_key"], pinned["coordinator"]
        assert f"{silo} signs as {key}; requests are checked against the coordinator key {coordinator}" in log

    # the coordinator's audit trail, logged with the job: every silo's replies accepted under its
    # roster key, and the chain and its signatures check against the stack's roster
    assert "audit/coordinator.jsonl" in {a.path for a in client.list_artifacts(job.info.run_id, "audit")}
    chain = Path(client.download_artifacts(job.info.run_id, "audit/coordinator.jsonl", str(tmp_path)))
    records = [json.loads(line) for line in chain.read_text().splitlines() if line.strip()]
    accepted = [r for r in records if r["decision"] == "accepted"]
    assert {r["silo"] for r in accepted} == set(SILOS) and all(r["reply_jws"] for r in accepted)
    verify = [str(BIN / "fedsilo"), "audit", "verify", str(chain), "--roster", str(roster)]
    verified = subprocess.run(verify, capture_output=True, text=True, timeout=120)
    assert verified.returncode == 0 and "chain OK" in verified.stdout, verified.stdout + verified.stderr


def test_a_silo_user_sees_only_its_own_scenarios_experiments(compose_stack):
    stack = compose_stack
    search = f"{stack.mlflow_uri}/api/2.0/mlflow/experiments/get-by-name?experiment_name="
    clinic = f"clinic-a:{stack.secrets['MLFLOW_PASSWORD_CLINIC_A']}"
    assert status(search + "smoke", clinic) == 200
    assert status(search + "medical", clinic) == 403  # hospital-a's scenario, not clinic-a's


def test_the_stack_ui_asks_for_the_auth_string_then_lists_the_scheduled_scenarios(
    compose_stack, page, tmp_path
):
    stack = compose_stack
    ui = f"http://localhost:{stack.prefect_port}"  # the UI's API address (PREFECT_UI_API_URL)
    page.goto(ui)  # the UI's own routes exist only inside the page (a deep link answers 404)
    page.wait_for_load_state("networkidle")
    page.screenshot(path=tmp_path / "stack-login.png")
    page.locator("input").first.fill(stack.secrets["PREFECT_AUTH"])  # the UI's login form
    page.get_by_role("button", name="Login").click()
    page.wait_for_load_state("networkidle")
    page.screenshot(path=tmp_path / "stack-after-login.png")
    page.get_by_text("Deployments", exact=True).first.click()
    page.get_by_text("medical", exact=True).first.wait_for(timeout=60_000)
    page.screenshot(path=tmp_path / "stack-deployments.png", full_page=True)
    text = page.inner_text("body")
    assert "smoke" in text and "clinic-a" in text and "1 schedules" in text
    page.get_by_role("link", name="medical", exact=True).first.click()  # its page: the cron, in words
    page.get_by_text(re.compile(r"0?6:00")).first.wait_for(timeout=30_000)
    page.screenshot(path=tmp_path / "stack-medical.png", full_page=True)
    assert "Monday" in page.inner_text("body")
