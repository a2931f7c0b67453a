"""The flow `silo-job`: one silo's part of one federated job, run by that silo's own worker.

In distributed mode the coordinator starts one run of the silo's deployment (`silo-job/<silo>` on
work pool `fedsilo-<silo>`) per job and sends it the job's steps in turn as run inputs (see
pipelines/steps.py). The run builds the silo's participant (data, tokenizer, model) once and keeps
it for every step; each step is a task of the run, visible in the Prefect UI:

- `prepare` describes the silo's data; `fit` trains from the global weights and writes the update;
  under secure aggregation `fit` keeps the update on the silo's own disk, `share` sends its seeds'
  Shamir shares sealed for each peer, `mask` sends the update double-masked, and `unmask` the
  shares that remove the survivors' self masks and the dropped silos' pairwise masks;
- `evaluate` scores weights on the silo's test split, `score` several models at once (the matrix);
- `personalize` fine-tunes the final model on the silo's own data and reports its own score;
- steps of the operator's own extensions (`fedsilo worker --extension MODULE`).

Weights come and go by URI with a sha256 checksum. The silo's data location comes from this
process's environment (FEDSILO_SILO_DATA, set by `fedsilo worker --data`), never from the
coordinator. Every request is a JWS the coordinator signed, checked by the silo's gate
(fedsilo.trust.gate) before anything runs; every reply is signed with the silo's own key. The run
ends on `stop`, or by itself once the coordinator's run has ended.
"""

import os
import time
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run

from fedsilo import names
from fedsilo.errors import FederationError
from fedsilo.extensions import load_extensions
from fedsilo.scenario import Scenario
from fedsilo.silo import participants_built, release_participants, with_local_data
from fedsilo.trust.credentials import silo_gate
from fedsilo.trust.envelope import peek
from fedsilo.trust.gate import SiloGate
from pipelines.steps import Backoff, StepReply, StepRequest, send_reply, take_new
from pipelines.tasks import step_task

SILO_FLOW = "silo-job"
DATA_ENV = "FEDSILO_SILO_DATA"
SILO_ENV = "FEDSILO_SILO"  # the one silo this worker's runs serve (`fedsilo worker --silo`)
COORDINATOR_CHECK_SECONDS = 5.0


def pool_name(silo: str) -> str:
    """The work pool a silo's worker polls: one per silo, so each silo runs only its own steps."""
    return names.work_pool_name(silo)


def local_view(scenario: Scenario, silo: str) -> Scenario:
    """The scenario with this silo's data where its own environment says, if it says."""
    path = os.environ.get(DATA_ENV)
    return with_local_data(scenario, silo, path) if path else scenario


def answer(gate: SiloGate, silo: str, request: StepRequest) -> StepReply:
    """The signed reply to one request: the gate checks it (signature, address, expiry, replay,
    policy) and runs the step as a task of this run only when it passes."""

    def work(scenario: Scenario, step):
        return step_task(scenario, step, silo)(scenario, silo, step)

    return StepReply(request=request.request, silo=silo, token=gate.serve(request.token, work))


def _coordinator_gone(client: SyncPrefectClient, coordinator: UUID) -> bool:
    try:
        state = client.read_flow_run(coordinator).state
    except ObjectNotFound:
        return True
    return state is not None and state.is_final()


def _requests(client: SyncPrefectClient, coordinator: UUID):
    """This run's step requests in the order they come, until `stop` or the coordinator ends."""
    own, seen, backoff = UUID(str(flow_run.id)), set(), Backoff()
    checked = time.monotonic()
    while True:
        for request in take_new(client, own, "step-", seen, StepRequest):
            if request.stop:
                return
            yield request
            backoff.reset()
        if time.monotonic() - checked > COORDINATOR_CHECK_SECONDS:
            if _coordinator_gone(client, coordinator):
                get_run_logger().warning("the coordinator's run has ended; this silo's run ends too")
                return
            checked = time.monotonic()
        backoff.wait()


@flow(
    name=SILO_FLOW,  # the coordinator names each run `<job>:<silo>`
    description="One silo's part of a federated job: its steps (prepare, fit, evaluate...) as tasks.",
    log_prints=True,
)
def silo_job(scenario: Scenario, silo: str, coordinator_run: str) -> int:
    """Serve the steps the coordinator's run `coordinator_run` sends to `silo`; returns how many.

    `scenario` only names the run's job in the UI: what a step runs is read from its signed request.
    """
    own = os.environ.get(SILO_ENV)
    if own and silo != own:  # a run started for another silo's name must not touch this one's data
        raise FederationError(f"this worker serves silo {own}; a run for silo {silo!r} was refused")
    loaded = load_extensions()  # the operator's own silo steps, if it named any
    logger = get_run_logger()
    if loaded:
        logger.info("%s serves the extensions %s", silo, ", ".join(loaded))
    gate = silo_gate(silo, lambda signed: local_view(signed, silo))
    logger.info("%s signs as %s; requests are checked against the coordinator key %s", silo,
                gate.identity.public_key, gate.coordinator_key)  # fmt: skip
    for rule in gate.policy.describe() if gate.policy else []:
        logger.info("%s policy: %s", silo, rule)
    coordinator, served, built = UUID(coordinator_run), 0, participants_built()
    try:
        with get_client(sync_client=True) as client:
            for request in _requests(client, coordinator):
                reply = answer(gate, silo, request)
                send_reply(client, coordinator, reply)
                served += 1
                said = peek(reply.token)
                if said.get("outcome") in ("refused", "declined"):  # what the silo said no to, and why
                    logger.warning("%s %s the request %s: %s", silo, said["outcome"], request.label[:80],
                                   said.get("reason", "")[:500])  # fmt: skip
                else:
                    logger.info("%s %s: %s", silo, request.label[:80], said.get("outcome"))
    finally:
        release_participants()
    logger.info(
        "%s served %d steps; its data and model were built %d time(s)",
        silo,
        served,
        participants_built() - built,
    )
    return served
