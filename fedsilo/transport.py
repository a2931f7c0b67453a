"""How the coordinator reaches its silos: one method, `ask(scenario, step, silos)`.

A transport delivers one step record to each named silo and returns `Answers`: the replies by the
silo they were addressed to, and the silos that did not answer (crashed, timed out, unreachable).
It decides nothing about the replies: the coordinator screens them (fedsilo.engine.screening).

Implementations: `InProcess` here (silos in this process; a test passes a plain handler function,
the shape of httpx's `MockTransport(handler)`), and in pipelines/transports.py the Prefect ones
(a task per silo and step in embedded mode; each silo's job run on its own worker in distributed
mode). Adding an orchestrator (Ray, plain processes) = one more class with this method.
"""

import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

from fedsilo.scenario import Scenario
from fedsilo.steps import Step

log = logging.getLogger("fedsilo")


class Answers(NamedTuple):
    """What came back from one step: replies by addressed silo, and the silos with no answer."""

    replies: dict[str, Any]
    absent: list[str]


class Transport(Protocol):
    """Delivers steps to silos."""

    def ask(self, scenario: Scenario, step: Step, silos: Sequence[str]) -> Answers:
        """Ask each of `silos` to do `step` with `scenario`, and wait for their replies.

        Receives: the job's scenario as the coordinator sees it (labels settled after prepare),
        a step record, and the names of the silos to ask (a subset of the scenario's).
        Returns: `Answers`: each reply keyed by the silo it was addressed to (unchecked: a reply
        may name another silo or be of the wrong type, and screening refuses it), and every
        asked silo that gave none, in `silos` order.
        Raises: nothing for a silo's failure (that silo is absent); only errors of the transport
        itself (its server unreachable), which end the job.
        """
        ...

    def close(self) -> None:
        """Release what the job held (silos' runs, models in memory); called once at the end."""
        ...


Handler = Callable[[Scenario, str, Step], Any]


class InProcess:
    """Silos called in turn in this process through `handler(scenario, silo, step)`.

    The default handler is the real silo side (`fedsilo.silo_steps.handle`); tests pass a plain
    function that scripts the replies. A silo whose handler raises is absent, its error logged.
    """

    def __init__(self, handler: Handler | None = None):
        self.handler = handler

    def ask(self, scenario: Scenario, step: Step, silos: Sequence[str]) -> Answers:
        handler = self.handler or _real_silos()
        replies, absent = {}, []
        for silo in silos:
            try:
                replies[silo] = handler(scenario, silo, step)
            except Exception as exc:
                log.warning("silo %s did not answer %s: %s", silo, step.label, exc)
                absent.append(silo)
        return Answers(replies, absent)

    def close(self) -> None:
        if self.handler is None:
            from fedsilo.silo import release_participants

            release_participants()


def _real_silos() -> Handler:
    from fedsilo.silo_steps import handle

    return handle
