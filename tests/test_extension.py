"""The documented extension points, used from this module alone: a new silo step (record,
handler, the coordinator line that asks it) and a new aggregation wrapper, in a real job in this
process and through Prefect tasks."""

from dataclasses import dataclass
from typing import ClassVar

import pytest
from prefect import flow

from fedsilo.engine import Coordinator, run_job
from fedsilo.engine.wrapping import Wrapper
from fedsilo.handler import handles
from fedsilo.scenario import load_scenario
from fedsilo.silo import participant
from fedsilo.steps import Step
from fedsilo.transport import InProcess
from pipelines.transports import TaskTransport
from tests.conftest import REPO
from tests.engine import Recorder


@dataclass(frozen=True)
class TrainingSize:
    """A new reply: how many examples a silo trains on (a count, never rows)."""

    silo: str
    examples: int


@dataclass(frozen=True)
class CountExamples(Step):
    """A new step: each silo answers its training size, checked against a floor."""

    floor: int
    kind: ClassVar[str] = "count-examples"
    reply: ClassVar[type] = TrainingSize


@handles(CountExamples)
def count_examples(scenario, silo, step, progress=None) -> TrainingSize:
    return TrainingSize(silo, max(step.floor, participant(scenario, silo).num_examples))


class AsksForSizes(Coordinator):
    """The coordinator line that asks the new step, at the documented extension point."""

    def after_rounds(self, current, result):
        outcome = self.ask(CountExamples(floor=1), "count-examples")
        sizes = ",".join(f"{silo}={reply.examples}" for silo, reply in sorted(outcome.replies.items()))
        self.tracker.set_tags({"test.training_sizes": sizes})


class Frozen(Wrapper):
    """A new wrapper: the global model never moves (every round keeps the starting weights)."""

    def aggregate(self, ctx, current, replies, combine=None):
        return self.inner.aggregate(ctx, current, replies, lambda global_state, updates: global_state)


def job(transport) -> Recorder:
    scenario = load_scenario(REPO / "scenarios" / "smoke.yaml", ["federation.rounds=1"])
    tracker = Recorder()
    run_job(scenario, transport, job="extended", tracker=tracker, wrap=Frozen, coordinator=AsksForSizes)
    return tracker


def check(tracker: Recorder) -> None:
    assert tracker.tags[None]["test.training_sizes"] == "clinic-a=30,clinic-b=30"
    for name, tensor in tracker.models[1].items():
        assert (tensor == tracker.models[0][name]).all(), name


def test_a_new_step_and_a_new_wrapper_in_an_in_process_job(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSILO_WORKDIR", str(tmp_path))
    check(job(InProcess()))


@pytest.mark.slow
def test_a_new_step_and_a_new_wrapper_through_prefect_tasks(prefect_server, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSILO_WORKDIR", str(tmp_path))
    check(flow(name="extended-job")(job)(TaskTransport()))
