"""A holder of the shared Prefect credential attacks a distributed job while it runs, through the
same run inputs the coordinator and the silos use: it replays a captured fit request, posts a
forged mask request and a request whose scenario it changed, and posts a reply for another silo.
Each is refused and named in the silo's log and audit trail and in the coordinator's, and the
job's global model equals the clean (embedded) run's."""

import base64
import json
import threading
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.settings import PREFECT_API_URL, temporary_settings

from fedsilo.privacy.secagg_steps import Mask
from fedsilo.scenario import load_scenario
from fedsilo.trust import envelope
from fedsilo.trust.audit import AuditTrail, verify_chain
from fedsilo.trust.identity import Identity
from fedsilo.trust.roster import load_roster
from fedsilo.trust.signer import Signer
from pipelines.steps import StepReply, StepRequest
from tests.conftest import REPO
from tests.stack import stop
from tests.test_distributed import (
    SLOW_FIT,
    fedsilo,
    final_weights,
    finish,
    job_run,
    wait_until_running,
)

pytestmark = pytest.mark.slow
SMOKE = REPO / "scenarios" / "smoke.yaml"
SETTINGS = [SLOW_FIT]  # the default time limits: a slow machine must not make a silo absent here


def _run_of(client, name: str):
    (run,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
    return run


def _inputs(client, run_id, prefix: str) -> list:
    return client.filter_flow_run_input(run_id, prefix, limit=200, exclude_keys=set())


def _changed(token: str) -> str:
    """The token with its scenario changed after signing (fewer local steps), signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["args"]["scenario"]["federation"]["local_steps"] = 1
    return ".".join(
        [header, base64.urlsafe_b64encode(envelope.canonical(claims)).decode().rstrip("="), signature]
    )


def attack(stack, job: str, done: dict) -> None:
    """While clinic-b fits round 1: replay, forge, change and speak for another silo."""
    wait_until_running(stack, f"{job}:clinic-b", "fit-clinic-b-round-1")
    with temporary_settings({PREFECT_API_URL: stack.prefect_api}), get_client(sync_client=True) as client:
        silo_a, silo_b = _run_of(client, f"{job}:clinic-a"), _run_of(client, f"{job}:clinic-b")
        requests = [StepRequest.model_validate_json(i.value) for i in _inputs(client, silo_a.id, "step-")]
        fit = next(r for r in requests if envelope.peek(r.token)["step"] == "fit")
        coordinator = silo_b.parameters["coordinator_run"]
        forger = Signer(Identity.generate("coordinator"), load_roster(), job, AuditTrail(None, "coordinator"))
        scenario = load_scenario(SMOKE, ["federation.mode=distributed"])
        mask = Mask(1, "0" * 64, {}, "file:///tmp/attacker-can-read-this")
        posts = {
            "replay": fit.token,
            "forged-mask": forger.request(scenario, mask, "clinic-a", 600).token,
            "changed-scenario": _changed(fit.token),
        }
        for name, token in posts.items():
            client.create_flow_run_input(
                silo_a.id, f"step-{name}", StepRequest(request=name, token=token).model_dump_json()
            )
        replies = [StepReply.model_validate_json(i.value) for i in _inputs(client, coordinator, "reply-")]
        of_a = next(r for r in replies if r.silo == "clinic-a")
        batch = sorted(_inputs(client, silo_b.id, "step-"), key=lambda i: i.created)[-1].key.removeprefix(
            "step-"
        )
        posing = StepReply(request=batch, silo="clinic-b", token=of_a.token)
        client.create_flow_run_input(coordinator, f"reply-{batch}-attacker", posing.model_dump_json())
    done["attacked"] = True


def test_a_credential_holder_cannot_replay_forge_change_or_speak_for_a_silo(
    stack, silo_files, tmp_path, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.mlflow_uri)
    workers = [stack.worker(silo, SMOKE, path) for silo, path in silo_files.items()]
    done: dict = {}
    attacker = threading.Thread(target=attack, args=(stack, "attacked", done), daemon=True)
    try:
        job = fedsilo(
            stack, "run", str(SMOKE), "--mode=distributed", "--job-name=attacked", *SETTINGS, cwd=tmp_path
        )
        attacker.start()
        code, out, err = finish(job)
        attacker.join(timeout=60)
    finally:
        for worker in workers:
            stop(worker)
    assert code == 0, err[-4000:]
    assert done.get("attacked"), "the attack did not run"

    trail = stack.silo_state("clinic-a") / "clinic-a" / "audit.jsonl"
    chain = verify_chain(trail, load_roster(stack.env["FEDSILO_ROSTER"]))
    assert chain.ok, chain.problems
    refused = [r["reason"] for r in chain.records if r["decision"] == "refused"]
    assert any("replay" in reason for reason in refused)
    assert sum("signature is not the coordinator's" in reason for reason in refused) == 2  # forged, changed
    log = (stack.root / "silos" / "clinic-a" / "worker.log").read_text()
    assert "clinic-a refused the request" in log and "replay" in log

    client = MlflowClient(stack.mlflow_uri)
    parent = job_run(client, "attacked").info.run_id
    local = Path(client.download_artifacts(parent, "audit", str(tmp_path / "audit")))
    coordinator = verify_chain(local / "coordinator.jsonl", load_roster(local / "roster.yaml"))
    assert coordinator.ok, coordinator.problems
    posed = [r for r in coordinator.records if r["decision"] == "refused" and r["silo"] == "clinic-b"]
    assert posed and "not silo clinic-b's" in posed[0]["reason"]

    clean = fedsilo(stack, "run", str(SMOKE), "--job-name=clean", *SETTINGS, cwd=tmp_path)
    code, _, err = finish(clean)
    assert code == 0, err[-4000:]
    attacked, embedded = final_weights(client, "attacked"), final_weights(client, "clean")
    for name, tensor in attacked.items():
        torch.testing.assert_close(tensor, embedded[name], rtol=1e-5, atol=1e-6, msg=name)
