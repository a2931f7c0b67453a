"""Prefect tasks: one per (step, silo), named as users see them (`fit-<silo>-round-<r>`, ...), and
the coordinator's named work (`aggregate-round-<r>`).

Tasks pass weight references and small records, never tensors. Long steps (fit, personalize) take
the scenario's retries and timeout; the others are retried once.
"""

import math
from collections.abc import Callable
from typing import Any

from prefect import Task, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from fedsilo.messages import FitReport
from fedsilo.scenario import Scenario
from fedsilo.silo_steps import handle
from fedsilo.steps import Step

PROGRESS_EVERY = 0.25  # log a silo's training progress every quarter of its steps


def _progress_logger(silo: str, what: str):
    logger, marks = get_run_logger(), set()

    def progress(step: int, total: int, loss: float) -> None:
        mark = int(step / total / PROGRESS_EVERY)
        if mark not in marks or step == total:
            marks.add(mark)
            logger.info("%s %s: step %d/%d, loss %.3f", silo, what, step, total, loss)

    return progress


@task(name="silo-step", cache_policy=NO_CACHE, retries=1)
def silo_step(scenario: Scenario, silo: str, step: Step):
    """One silo's work on one step (fedsilo.silo_steps.handle), with progress in the task's log."""
    progress = _progress_logger(silo, step.label) if step.retried else None
    reply = handle(scenario, silo, step, progress)
    if isinstance(reply, FitReport) and reply.local is not None:
        took = f" in {reply.seconds:.1f}s" if math.isfinite(reply.seconds) else ""  # not sent under DP
        accuracy = reply.local.accuracy
        get_run_logger().info("%s round %d: local accuracy %.3f%s", silo, reply.round, accuracy, took)
    return reply


def step_task(scenario: Scenario, step: Step, silo: str) -> Task:
    """`silo_step` under the step's names, with the scenario's retries and timeout for long steps."""
    options: dict[str, Any] = {"name": f"{step.kind}-silo", "task_run_name": step.task_name(silo)}
    if step.retried:
        federation = scenario.federation
        options |= {
            "retries": federation.silo_retries,
            "retry_delay_seconds": 2,
            "timeout_seconds": federation.silo_timeout_seconds,
        }
    return silo_step.with_options(**options)


@task(name="aggregate", cache_policy=NO_CACHE)
def _coordinator_work(work: Callable[[], Any]) -> Any:
    return work()


def phase(name: str, work: Callable[[], Any]) -> Any:
    """Coordinator-side work (a round's aggregation) as a task named `name`."""
    return _coordinator_work.with_options(task_run_name=name)(work)
