"""The distributed transport: each silo's `silo-job/<silo>` run, on the silo's own worker.

The first step starts each silo's run for the job (`<job>:<silo>`, with `run_deployment`); every
step is then a request to it (pipelines/steps.py), so a silo builds its data and model once per
job. Each step waits for all asked silos up to the scenario's limits; a silo whose run has not
answered by then is cancelled and absent, and the next step starts a new run for it. Requests and
replies are signed (fedsilo.trust): this courier only carries them, and waits past any reply that
the addressed silo did not sign for its request.
"""

import time
from collections.abc import Mapping, Sequence
from uuid import UUID

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run
from prefect.states import Cancelled

from fedsilo import names
from fedsilo.errors import FederationError
from fedsilo.scenario import Scenario
from fedsilo.steps import Prepare, Step
from fedsilo.transport import Check, step_limit
from fedsilo.trust.signer import Sent
from pipelines.silo_flow import SILO_FLOW
from pipelines.steps import Backoff, StepReply, StepRequest, new_request_id, send_request, take_new

POLL_SECONDS = 1.0
STATE_CHECK_SECONDS = 1.0  # how often a waiting coordinator looks for silo runs that ended


class SiloRuns:
    """Silos reached through their job runs; see the module docstring."""

    def __init__(self, job: str):
        self.job = job
        self.sessions: dict[str, UUID] = {}

    def deliver(
        self, scenario: Scenario, step: Step, requests: Mapping[str, Sent], check: Check
    ) -> dict[str, str]:
        """Send each silo its signed request and wait for the replies its silo signed."""
        if isinstance(step, Prepare):
            self._await_deployments(scenario, requests)
        batch, waiting = new_request_id(), {}
        with get_client(sync_client=True) as client:
            for silo, sent in requests.items():
                session = self._session(scenario, silo)
                if session is not None:
                    send_request(
                        client, session, StepRequest(request=batch, token=sent.token, label=step.label)
                    )
                    waiting[silo] = session
            return self._collect(client, batch, waiting, requests, check, step_limit(scenario, step))

    @staticmethod
    def _coordinator() -> UUID:
        if flow_run.id is None:
            raise FederationError("distributed silos answer a coordinator flow run; run inside one")
        return UUID(str(flow_run.id))

    def _session(self, scenario: Scenario, silo: str) -> UUID | None:
        """The silo's run for this job, started now if it has none (or its last one ended)."""
        if silo not in self.sessions:
            parameters = {
                "scenario": scenario.model_dump(mode="json"),
                "silo": silo,
                "coordinator_run": str(self._coordinator()),
            }
            try:
                run = run_deployment(
                    f"{SILO_FLOW}/{names.silo_deployment_name(silo)}",
                    parameters=parameters,
                    flow_run_name=names.silo_run_name(self.job, silo),
                    timeout=0,
                )
            except ObjectNotFound:
                get_run_logger().warning(
                    "silo %s has no deployment %s/%s: start its worker with `fedsilo worker --silo %s ...`",
                    *(silo, SILO_FLOW, silo, silo),
                )
                return None
            self.sessions[silo] = run.id
        return self.sessions[silo]

    def _ended(self, client, waiting: dict[str, UUID]) -> dict[str, str]:
        """Silos whose run has ended (crashed, cancelled, failed) while they were asked a step."""
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(waiting.values())))
        )
        ended = {run.id: run.state for run in runs if run.state is not None and run.state.is_final()}
        return {
            silo: f"its run {ended[run].name}: {ended[run].message or ''}".strip(": ")
            for silo, run in waiting.items()
            if run in ended
        }

    def _collect(
        self,
        client,
        batch: str,
        waiting: dict[str, UUID],
        requests: Mapping[str, Sent],
        check: Check,
        limit: float,
    ) -> dict[str, str]:
        """Each silo's signed reply in `batch`, waiting up to `limit` seconds. A reply that its silo
        did not sign for its request is refused (by `check`) and the wait goes on; silos that end
        or run out of time are logged, and their runs forgotten (cancelled when still going)."""
        logger, coordinator = get_run_logger(), self._coordinator()
        deadline, seen, replies, backoff = time.monotonic() + limit, set(), {}, Backoff()
        checked = time.monotonic()
        while waiting and time.monotonic() < deadline:
            backoff.wait()
            for reply in take_new(client, coordinator, f"reply-{batch}", seen, StepReply):
                if reply.silo not in waiting:
                    continue
                if problem := check(requests[reply.silo], reply.token):
                    logger.warning("a reply claiming to be silo %s's was refused: %s", reply.silo, problem)
                    continue
                del waiting[reply.silo]
                replies[reply.silo] = reply.token
            if waiting and time.monotonic() - checked > STATE_CHECK_SECONDS:
                checked = time.monotonic()
                for silo, why in self._ended(client, waiting).items():
                    logger.warning("silo %s: %s", silo, why)
                    del waiting[silo], self.sessions[silo]
        for silo, run in waiting.items():
            message = f"no answer within {limit:.0f}s; cancelled by the coordinator"
            client.set_flow_run_state(run, Cancelled(message=message), force=True)
            logger.warning("silo %s: %s", silo, message)
            self.sessions.pop(silo, None)
        return replies

    def close(self) -> None:
        """Tell every silo's run that the job is over, so its worker is free for the next one."""
        with get_client(sync_client=True) as client:
            for run in self.sessions.values():
                send_request(client, run, StepRequest(request=new_request_id(), stop=True))
        self.sessions.clear()

    def _await_deployments(self, scenario: Scenario, silos: Sequence[str]) -> None:
        """Give silos whose workers are still starting up to `silo_pickup_seconds` to register."""
        deadline = time.monotonic() + scenario.federation.silo_pickup_seconds
        waiting = set(silos)
        with get_client(sync_client=True) as client:
            while waiting and time.monotonic() < deadline:
                for silo in sorted(waiting):
                    try:
                        client.read_deployment_by_name(f"{SILO_FLOW}/{names.silo_deployment_name(silo)}")
                        waiting.discard(silo)
                    except ObjectNotFound:
                        pass
                if waiting:
                    time.sleep(POLL_SECONDS)
        if waiting:
            get_run_logger().warning("no worker registered yet for: %s", ", ".join(sorted(waiting)))
