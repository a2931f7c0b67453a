"""The engine's couriers through Prefect: silo steps as tasks in this process (embedded), or as
requests to each silo's job run on its own worker (distributed). See fedsilo/transport.py for the
one method both implement."""

from prefect import get_run_logger

from fedsilo.errors import SiloDeclined, StepFailed
from fedsilo.scenario import Scenario
from fedsilo.steps import Step
from fedsilo.transport import InProcess
from pipelines.silo_runs import SiloRuns
from pipelines.tasks import step_task


class TaskTransport(InProcess):
    """Silos as tasks of the coordinator flow, one after another in this process, each behind its
    own gate with the job's per-silo key.

    In-process silos share its cores and torch's RNG, and only a task in the main thread is one
    that Prefect's timeout can interrupt.
    """

    def work(self, scenario: Scenario, silo: str, step: Step):
        state = step_task(scenario, step, silo)(scenario, silo, step, return_state=True)
        if state.is_completed():
            return state.result()
        error = state.result(raise_on_failure=False)
        if isinstance(error, SiloDeclined):
            raise error
        get_run_logger().warning("silo %s did not answer %s: %s", silo, step.label, state.message)
        raise StepFailed(f"silo {silo}, {step.label}: {state.message}")

    def close(self) -> None:
        """Free the silos' data and models held for this job."""
        from fedsilo.silo import release_participants

        release_participants()


def transport_for(scenario: Scenario, job: str) -> TaskTransport | SiloRuns:
    """The way to reach this scenario's silos, by `federation.mode`."""
    return SiloRuns(job) if scenario.federation.mode == "distributed" else TaskTransport()
