"""How the coordinator reaches its silos: as tasks in this process, or as flow runs on their workers.

Both implement the engine's `Silos` protocol (prepare, fit, evaluate, personalize): each call
answers the silos' replies and the names of the silos that did not answer, so the one round loop
in fedsilo.coordinator is the same for both.
"""

import time
from dataclasses import asdict

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled

from fedsilo import artifacts
from fedsilo.federation import JobPaths
from fedsilo.messages import DataSummary, Evaluation, FitReport, MaskedUpdate, Scores, WeightRef, load_reply
from fedsilo.scenario import Scenario
from pipelines.silo_flow import SILO_FLOW
from pipelines.tasks import (
    evaluate_silo,
    fit_with_limits,
    mask_silo,
    personalize_silo,
    prepare_silo,
    score_silo,
)

POLL_SECONDS = 1.0


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


class DistributedSilos:
    """Silos as flow runs of their `silo-round/<silo>` deployments, each on the silo's own worker.

    Each call starts one flow run per silo at once, then waits for all of them up to the scenario's
    limits; a silo still running then is cancelled and reported missing, and asked again next step.
    """

    def __init__(self, paths: JobPaths, job: str):
        self.paths, self.job = paths, job

    def _start(self, scenario: Scenario, silo: str, parameters: dict):
        try:
            return run_deployment(
                f"{SILO_FLOW}/{silo}",
                parameters={"scenario": scenario.model_dump(mode="json"), "silo": silo, **parameters},
                flow_run_name=f"{self.job}:{silo}-{parameters['step']}",
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

    def _wait(self, runs: dict, limit: float) -> dict[str, bool]:
        """Wait for the flow runs to finish; True for silos whose run completed."""
        logger = get_run_logger()
        deadline, done = time.monotonic() + limit, {}
        with get_client(sync_client=True) as client:
            while len(done) < len(runs) and time.monotonic() < deadline:
                time.sleep(POLL_SECONDS)
                for silo, run in runs.items():
                    state = client.read_flow_run(run.id).state
                    if silo not in done and state is not None and state.is_final():
                        done[silo] = state.is_completed()
                        if not done[silo]:
                            logger.warning("silo %s: %s %s: %s", silo, run.name, state.name, state.message)
            for silo, run in runs.items():
                if silo not in done:
                    message = f"no answer within {limit:.0f}s; cancelled by the coordinator"
                    client.set_flow_run_state(run.id, Cancelled(message=message), force=True)
                    logger.warning("silo %s: %s %s", silo, run.name, message)
                    done[silo] = False
        return done

    def _call(self, scenario: Scenario, kind: type, step: str, params_for, attempts: int = 1, only=None):
        federation = scenario.federation
        limit = federation.silo_timeout_seconds * attempts + federation.silo_pickup_seconds
        silos = [s for s in scenario.silo_names() if only is None or s in only]
        runs = {}
        for silo in silos:
            params = {"step": step, "reply_uri": self.paths.reply_uri(step, silo), **params_for(silo)}
            run = self._start(scenario, silo, params)
            if run is not None:
                runs[silo] = run
        answered = self._wait(runs, limit)
        replies, missing = [], []
        for silo in silos:
            reply = (
                load_reply(kind, artifacts.read_bytes(self.paths.reply_uri(step, silo)))
                if answered.get(silo)
                else None
            )
            if (
                reply is not None and reply.silo == silo
            ):  # a reply speaks only for the silo whose run wrote it
                replies.append(reply)
            else:
                missing.append(silo)
        return replies, missing

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
        return self._call(scenario, DataSummary, "prepare", lambda silo: {"action": "prepare"})

    def fit(
        self, scenario: Scenario, round_index: int, current: WeightRef, config: dict[str, float]
    ) -> tuple[list[FitReport], list[str]]:
        def params(silo: str) -> dict:
            update = self.paths.update_uri(round_index, silo)
            return {
                "action": "fit",
                "weights": asdict(current),
                "round_index": round_index,
                "update_uri": update,
                "config": config,
            }

        attempts = scenario.federation.silo_retries + 1
        return self._call(scenario, FitReport, f"fit-round-{round_index}", params, attempts)

    def evaluate(
        self, scenario: Scenario, weights: WeightRef, step: str
    ) -> tuple[list[Evaluation], list[str]]:
        params = {"action": "evaluate", "weights": asdict(weights)}
        return self._call(scenario, Evaluation, f"evaluate-{step}", lambda silo: params)

    def evaluate_models(
        self, scenario: Scenario, models: dict[str, WeightRef], step: str
    ) -> tuple[list[Scores], list[str]]:
        params = {"action": "score", "models": {name: asdict(ref) for name, ref in models.items()}}
        return self._call(scenario, Scores, f"score-{step}", lambda silo: params)

    def personalize(
        self, scenario: Scenario, weights: WeightRef, steps: int
    ) -> tuple[list[Evaluation], list[str]]:
        params = {"action": "personalize", "weights": asdict(weights), "steps": steps}
        attempts = scenario.federation.silo_retries + 1
        return self._call(scenario, Evaluation, "personalize", lambda silo: params, attempts)

    def mask(
        self, scenario: Scenario, round_index: int, attempt: int, peers: dict[str, str]
    ) -> tuple[list[MaskedUpdate], list[str]]:
        def params(silo: str) -> dict:
            return {
                "action": "mask",
                "round_index": round_index,
                "attempt": attempt,
                "peers": peers,
                "update_uri": self.paths.update_uri(round_index, silo),
                "out_uri": self.paths.masked_uri(round_index, attempt, silo),
            }

        step = f"mask-round-{round_index}-attempt-{attempt}"
        return self._call(scenario, MaskedUpdate, step, params, only=peers)


def silos_for(scenario: Scenario, paths: JobPaths, job: str) -> EmbeddedSilos | DistributedSilos:
    """The way to reach this scenario's silos, by `federation.mode`."""
    return (DistributedSilos if scenario.federation.mode == "distributed" else EmbeddedSilos)(paths, job)
