"""The engine's transport through Prefect: silo steps as tasks in this process (embedded), or as
requests to each silo's job run on its own worker (distributed). See fedsilo/transport.py for the
one method both implement."""

from collections.abc import Sequence

from prefect import get_run_logger

from fedsilo.scenario import Scenario
from fedsilo.silo import release_participants
from fedsilo.steps import Step
from fedsilo.transport import Answers
from pipelines.silo_runs import SiloRuns
from pipelines.tasks import step_task


class TaskTransport:
    """Silos as tasks of the coordinator flow, one after another in this process.

    In-process silos share its cores and torch's RNG, and only a task in the main thread is one
    that Prefect's timeout can interrupt.
    """

    def ask(self, scenario: Scenario, step: Step, silos: Sequence[str]) -> Answers:
        replies, absent = {}, []
        for silo in silos:
            state = step_task(scenario, step, silo)(scenario, silo, step, return_state=True)
            if state.is_completed():
                replies[silo] = state.result()
            else:
                absent.append(silo)
                get_run_logger().warning("silo %s did not answer %s: %s", silo, step.label, state.message)
        return Answers(replies, absent)

    def close(self) -> None:
        """Free the silos' data and models held for this job."""
        release_participants()


def transport_for(scenario: Scenario, job: str) -> TaskTransport | SiloRuns:
    """The way to reach this scenario's silos, by `federation.mode`."""
    return SiloRuns(job) if scenario.federation.mode == "distributed" else TaskTransport()
