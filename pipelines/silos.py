"""How the coordinator reaches its silos: as tasks in this process, or as flow runs on their workers.

Both implement the engine's `Silos` protocol (prepare, fit, evaluate, personalize): each call
answers the silos' replies and the names of the silos that did not answer, so the one round loop
in fedsilo.coordinator is the same for both.
"""

import time
from dataclasses import asdict
from uuid import UUID

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run
from prefect.states import Cancelled
from pydantic import ValidationError

from fedsilo.federation import JobPaths
from fedsilo.messages import DataSummary, Evaluation, FitReport, MaskedUpdate, Scores, WeightRef, load_reply
from fedsilo.scenario import Scenario
from fedsilo.silo import release_participants
from pipelines.silo_flow import SILO_FLOW
from pipelines.steps import (
    Backoff,
    StepReply,
    StepRequest,
    new_request_id,
    request_arguments,
    send_request,
    take_new,
)
from pipelines.tasks import (
    evaluate_silo,
    fit_with_limits,
    mask_silo,
    personalize_silo,
    prepare_silo,
    score_silo,
)

POLL_SECONDS = 1.0
STATE_CHECK_SECONDS = 1.0  # how often a waiting coordinator looks for silo runs that ended


class EmbeddedSilos:
    """Silos as tasks of the coordinator flow, one after another in this process.

    In-process silos share its cores and torch's RNG, and only a task in the main thread is one
    that Prefect's timeout can interrupt.
    """

    def __init__(self, paths: JobPaths, job: str):
        self.paths, self.job = paths, job

    def _each(self, scenario: Scenario, call, args_for, only=None) -> tuple[list, list[str]]:
        replies, missing = [], []
        for silo in scenario.silo_names():
            if only is not None and silo not in only:
                continue
            state = call(scenario, silo, *args_for(silo), return_state=True)
            if state.is_completed():
                replies.append(state.result())
            else:
                missing.append(silo)
                get_run_logger().warning("silo %s did not answer: %s", silo, state.message)
        return replies, missing

    def prepare(self, scenario: Scenario) -> tuple[list[DataSummary], list[str]]:
        return self._each(scenario, prepare_silo, lambda silo: ())

    def fit(
        self, scenario: Scenario, round_index: int, current: WeightRef, config: dict[str, float]
    ) -> tuple[list[FitReport], list[str]]:
        return self._each(
            scenario,
            fit_with_limits(scenario),
            lambda silo: (round_index, current, self.paths.update_uri(round_index, silo), config),
        )

    def evaluate(
        self, scenario: Scenario, weights: WeightRef, step: str
    ) -> tuple[list[Evaluation], list[str]]:
        return self._each(scenario, evaluate_silo, lambda silo: (weights, step))

    def evaluate_models(
        self, scenario: Scenario, models: dict[str, WeightRef], step: str
    ) -> tuple[list[Scores], list[str]]:
        return self._each(scenario, score_silo, lambda silo: (models, step))

    def personalize(
        self, scenario: Scenario, weights: WeightRef, steps: int
    ) -> tuple[list[Evaluation], list[str]]:
        return self._each(scenario, personalize_silo, lambda silo: (weights, steps))

    def mask(
        self, scenario: Scenario, round_index: int, attempt: int, peers: dict[str, str]
    ) -> tuple[list[MaskedUpdate], list[str]]:
        def args(silo: str) -> tuple:
            uris = self.paths.update_uri(round_index, silo), self.paths.masked_uri(round_index, attempt, silo)
            return (round_index, attempt, peers, *uris)

        return self._each(scenario, mask_silo, args, only=peers)

    def close(self) -> None:
        """Free the silos' data and models held for this job."""
        release_participants()


class DistributedSilos:
    """Silos as one run per job of their `silo-job/<silo>` deployments, each on the silo's own worker.

    The first step starts each silo's run; every step is then a request to it (see
    pipelines/steps.py), so a silo builds its data and model once per job. Each call waits for all
    silos up to the scenario's limits; a silo whose run has not answered then is cancelled and
    reported missing, and the next step starts a new run for it.
    """

    def __init__(self, paths: JobPaths, job: str):
        self.paths, self.job = paths, job
        self.sessions: dict[str, UUID] = {}
        self.told: dict[str, dict] = {}  # the scenario each silo's run holds, to send only changes

    @staticmethod
    def _coordinator() -> UUID:
        if flow_run.id is None:
            raise RuntimeError("distributed silos answer a coordinator flow run; run inside one")
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
                    f"{SILO_FLOW}/{silo}",
                    parameters=parameters,
                    flow_run_name=f"{self.job}:{silo}",
                    timeout=0,
                )
            except ObjectNotFound:
                get_run_logger().warning(
                    "silo %s has no deployment %s/%s: start its worker with `fedsilo worker --silo %s ...`",
                    silo,
                    SILO_FLOW,
                    silo,
                    silo,
                )
                return None
            self.sessions[silo] = run.id
            self.told[silo] = parameters["scenario"]
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

    def _collect(self, client, request: str, waiting: dict[str, UUID], limit: float) -> dict[str, str]:
        """Each silo's reply body for `request`, waiting up to `limit` seconds; silos that fail,
        end or run out of time are logged, and their runs forgotten (cancelled when still going)."""
        logger, coordinator = get_run_logger(), self._coordinator()
        deadline, seen, bodies, backoff = time.monotonic() + limit, set(), {}, Backoff()
        checked = time.monotonic()
        while waiting and time.monotonic() < deadline:
            backoff.wait()
            for reply in take_new(client, coordinator, f"reply-{request}", seen, StepReply):
                if reply.silo not in waiting:
                    continue
                del waiting[reply.silo]
                if reply.error:  # a silo's words: logged, never trusted, and kept short
                    logger.warning("silo %s: %s", reply.silo, reply.error[:500])
                else:
                    bodies[reply.silo] = reply.body
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
        return bodies

    def _call(
        self, scenario: Scenario, kind: type, action: str, step: str, arguments_for, attempts=1, only=None
    ):
        federation = scenario.federation
        limit = federation.silo_timeout_seconds * attempts + federation.silo_pickup_seconds
        silos = [s for s in scenario.silo_names() if only is None or s in only]
        request, waiting = new_request_id(), {}
        shared = scenario.model_dump(mode="json")
        with get_client(sync_client=True) as client:
            for silo in silos:
                session = self._session(scenario, silo)
                if session is None:
                    continue
                arguments = request_arguments(**arguments_for(silo))
                changed = shared if self.told.get(silo) != shared else None
                message = StepRequest(
                    request=request, action=action, step=step, scenario=changed, arguments=arguments
                )
                self.told[silo] = shared
                send_request(client, session, message)
                waiting[silo] = session
            bodies = self._collect(client, request, waiting, limit)
        replies, missing = [], []
        for silo in silos:
            reply = _record(kind, silo, bodies.get(silo))
            if reply is None:
                missing.append(silo)
            else:
                replies.append(reply)
        return replies, missing

    def close(self) -> None:
        """Tell every silo's run that the job is over, so its worker is free for the next one."""
        with get_client(sync_client=True) as client:
            for run in self.sessions.values():
                send_request(client, run, StepRequest(request=new_request_id(), action="stop"))
        self.sessions.clear()

    def _await_deployments(self, scenario: Scenario) -> None:
        """Give silos whose workers are still starting up to `silo_pickup_seconds` to register."""
        deadline = time.monotonic() + scenario.federation.silo_pickup_seconds
        waiting = set(scenario.silo_names())
        with get_client(sync_client=True) as client:
            while waiting and time.monotonic() < deadline:
                for silo in sorted(waiting):
                    try:
                        client.read_deployment_by_name(f"{SILO_FLOW}/{silo}")
                        waiting.discard(silo)
                    except ObjectNotFound:
                        pass
                if waiting:
                    time.sleep(POLL_SECONDS)
        if waiting:
            get_run_logger().warning("no worker registered yet for: %s", ", ".join(sorted(waiting)))

    def prepare(self, scenario: Scenario) -> tuple[list[DataSummary], list[str]]:
        self._await_deployments(scenario)
        return self._call(scenario, DataSummary, "prepare", "prepare", lambda silo: {})

    def fit(
        self, scenario: Scenario, round_index: int, current: WeightRef, config: dict[str, float]
    ) -> tuple[list[FitReport], list[str]]:
        def arguments(silo: str) -> dict:
            update = self.paths.update_uri(round_index, silo)
            return {"weights": current, "round_index": round_index, "update_uri": update, "config": config}

        attempts = scenario.federation.silo_retries + 1
        return self._call(scenario, FitReport, "fit", f"fit-round-{round_index}", arguments, attempts)

    def evaluate(
        self, scenario: Scenario, weights: WeightRef, step: str
    ) -> tuple[list[Evaluation], list[str]]:
        return self._call(scenario, Evaluation, "evaluate", step, lambda silo: {"weights": weights})

    def evaluate_models(
        self, scenario: Scenario, models: dict[str, WeightRef], step: str
    ) -> tuple[list[Scores], list[str]]:
        arguments = {"models": {name: asdict(ref) for name, ref in models.items()}}
        return self._call(scenario, Scores, "score", step, lambda silo: arguments)

    def personalize(
        self, scenario: Scenario, weights: WeightRef, steps: int
    ) -> tuple[list[Evaluation], list[str]]:
        arguments = {"weights": weights, "steps": steps}
        attempts = scenario.federation.silo_retries + 1
        return self._call(
            scenario, Evaluation, "personalize", "personalize", lambda silo: arguments, attempts
        )

    def mask(
        self, scenario: Scenario, round_index: int, attempt: int, peers: dict[str, str]
    ) -> tuple[list[MaskedUpdate], list[str]]:
        def arguments(silo: str) -> dict:
            return {
                "round_index": round_index,
                "attempt": attempt,
                "peers": peers,
                "update_uri": self.paths.update_uri(round_index, silo),
                "out_uri": self.paths.masked_uri(round_index, attempt, silo),
            }

        step = f"mask-round-{round_index}-attempt-{attempt}"
        return self._call(scenario, MaskedUpdate, "mask", step, arguments, only=peers)


def _record(kind: type, silo: str, body: str | None):
    """A silo's reply record, or None when it sent none, an unreadable one, or one for another silo."""
    if body is None:
        return None
    try:
        reply = load_reply(kind, body.encode())
    except ValidationError as exc:
        get_run_logger().warning("silo %s: unreadable reply left out: %s", silo, str(exc)[:300])
        return None
    return reply if reply.silo == silo else None  # a reply speaks only for the silo it names


def silos_for(scenario: Scenario, paths: JobPaths, job: str) -> EmbeddedSilos | DistributedSilos:
    """The way to reach this scenario's silos, by `federation.mode`."""
    return (DistributedSilos if scenario.federation.mode == "distributed" else EmbeddedSilos)(paths, job)
