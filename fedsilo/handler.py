"""The silo side of every step: one `handle(scenario, silo, step)` that dispatches on the step's type.

Handlers are registered per step type with `@handles(StepType)`; the built-in ones live in
fedsilo.silo_steps (and secure aggregation's mask step in its own module). A step no handler
serves is an error that names it and the steps this silo serves.
"""

from collections.abc import Callable
from typing import Any

from fedsilo.errors import UnknownKind
from fedsilo.scenario import Scenario
from fedsilo.steps import Step
from fedsilo.training import Progress

Handler = Callable[[Scenario, str, Any, Progress | None], Any]
HANDLERS: dict[type[Step], Handler] = {}


def handles(step_type: type[Step]) -> Callable[[Handler], Handler]:
    """Register the decorated function as the silo's handler of `step_type` (replaces any other)."""

    def register(function: Handler) -> Handler:
        HANDLERS[step_type] = function
        return function

    return register


def handle(scenario: Scenario, silo: str, step: Step, progress: Progress | None = None):
    """`silo`'s reply to `step` (a record of `step.reply`'s type); raises UnknownKind for a step
    no handler serves, and whatever the handler raises (the transport reports the silo absent)."""
    handler = HANDLERS.get(type(step))
    if handler is None:
        served = [cls.kind for cls in HANDLERS]
        raise UnknownKind("step", getattr(step, "kind", type(step).__name__), served)
    return handler(scenario, silo, step, progress)
