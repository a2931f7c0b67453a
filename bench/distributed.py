"""Distributed against embedded: the same scenario through real servers and one worker per silo.

A `prefect server` and an `mlflow server` (as in tests/stack.py) serve both sides, so the ratio
isolates what distribution adds: silo processes started by their workers, steps sent as Prefect
run inputs, weights through the tracking server's artifact store. Each silo's worker reads only
its own CSV. The workers are registered before the clock starts (a silo's worker is up before a
job is, in practice); both sides must end with the same global accuracy.

Figures per scenario: wall time of each side and their ratio (goal <= 1.5x); and the seconds of
orchestration distribution adds per step. On one host the silos' processes share its cores, so
their tasks run slower side by side than one after another; to keep that out, each side's time
outside silo work is its wall time less its silo task time (embedded: the sum of the silo tasks,
one after another; distributed: per step, the slowest silo's task, read from Prefect), and the
figure is the difference of the two, less the silos' start-up (their job runs' pick-up and
process start, paid once per job and reported on its own), divided by the steps a silo served.

    python -m bench.distributed [--scenarios scenarios/smoke.yaml scenarios/medical.yaml]
"""

import argparse
import os
import re
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterName,
    TaskRunFilter,
    TaskRunFilterStartTime,
)
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings

from bench.common import FEDSILO, emit, run_timed, start
from fedsilo.scenario import load_scenario
from tests.stack import Stack, export_silo_files, stop

BENCH = "distributed"
RATIO_TARGET = 1.5
COLD = ["--set", "retraining.warm_start=false"]  # else the second side starts from the first's champion


def wait_for_deployments(stack: Stack, silos: list[str], seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    with temporary_settings({PREFECT_API_URL: stack.prefect_api}), get_client(sync_client=True) as client:
        for silo in silos:
            while True:
                try:
                    client.read_deployment_by_name(f"silo-job/{silo}")
                    break
                except ObjectNotFound:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"worker of {silo} never registered") from None
                    time.sleep(0.5)


def final_accuracy(tracking_uri: str, experiment: str, job: str) -> float:
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name(experiment).experiment_id],
        f"tags.`fedsilo.role` = 'federation' AND attributes.run_name = '{job}'",
    )
    return run.data.metrics["global_accuracy"]


def steps_served(log: Path) -> int:
    found = re.findall(r"served (\d+) steps", log.read_text())
    return int(found[-1]) if found else 0


def silo_task_seconds(stack: Stack, silos: list[str], began: float, ended: float) -> dict[str, float]:
    """Per step (a silo task's name without the silo), the slowest silo's run time, from Prefect."""
    window = TaskRunFilterStartTime(
        after_=datetime.fromtimestamp(began, UTC), before_=datetime.fromtimestamp(ended, UTC)
    )
    slowest: dict[str, float] = {}
    with temporary_settings({PREFECT_API_URL: stack.prefect_api}), get_client(sync_client=True) as client:
        for task in client.read_task_runs(task_run_filter=TaskRunFilter(start_time=window), limit=200):
            silo = next((s for s in silos if f"-{s}" in task.name), None)
            if silo is not None:
                step = task.name.replace(f"-{silo}", "")
                slowest[step] = max(slowest.get(step, 0.0), task.total_run_time.total_seconds())
    return slowest


def silo_start_seconds(stack: Stack, job: str, silos: list[str]) -> float:
    """How long the slowest silo's job run took from being created to starting its first step
    (the worker's pick-up, a fresh process, imports): paid once per job, by all silos at once."""
    slowest = 0.0
    with temporary_settings({PREFECT_API_URL: stack.prefect_api}), get_client(sync_client=True) as client:
        for silo in silos:
            names = FlowRunFilter(name=FlowRunFilterName(any_=[f"{job}:{silo}"]))
            (run,) = client.read_flow_runs(flow_run_filter=names)
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            first = min(t.start_time for t in tasks if t.start_time is not None)
            slowest = max(slowest, (first - run.created).total_seconds())
    return slowest


def timed(command: list[str], env: dict) -> tuple[float, float, float]:
    began = time.time()
    wall, _ = run_timed(command, env)
    return wall, began, time.time()


def compare(stack: Stack, path: Path, scratch: Path, stamp: str) -> None:
    scenario = load_scenario(path)
    files = export_silo_files(scenario, scratch / "data" / scenario.name)
    # silos on one host stand in for silos on their own hosts: each gets its share of the cores
    # (3 processes x 2 torch threads on 2 cores ran each fit 10x slower than alone)
    threads = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // len(scenario.silos)))}
    workers = [stack.worker(silo, path, files[silo], threads) for silo in scenario.silo_names()]
    try:
        wait_for_deployments(stack, scenario.silo_names())
        distributed_job = f"distributed-{stamp}"
        wall_distributed, *window_distributed = timed(
            [FEDSILO, "run", str(path), "--mode=distributed", f"--job-name={distributed_job}", *COLD],
            stack.env,
        )
    finally:
        for worker in workers:
            stop(worker)
    embedded_job = f"embedded-{stamp}"
    wall_embedded, *window_embedded = timed(
        [FEDSILO, "run", str(path), f"--job-name={embedded_job}", *COLD], stack.env
    )
    accuracy = {
        side: final_accuracy(stack.mlflow_uri, scenario.name, job)
        for side, job in (("distributed", distributed_job), ("embedded", embedded_job))
    }
    steps = steps_served(stack.root / "silos" / scenario.silo_names()[0] / "worker.log")
    ratio = wall_distributed / wall_embedded
    common = {"scenario": scenario.name, "silos": len(scenario.silos), "rounds": scenario.federation.rounds}
    emit(BENCH, "embedded_wall", round(wall_embedded, 2), "s", accuracy=accuracy["embedded"], **common)
    emit(
        BENCH, "distributed_wall", round(wall_distributed, 2), "s", accuracy=accuracy["distributed"], **common
    )
    emit(BENCH, "wall_ratio", round(ratio, 2), "x", f"<= {RATIO_TARGET}", ratio <= RATIO_TARGET, **common)
    silos = scenario.silo_names()
    # embedded silos run one after another: their time is the sum over silos, not the slowest
    silo_embedded = sum(sum(silo_task_seconds(stack, [s], *window_embedded).values()) for s in silos)
    silo_distributed = sum(silo_task_seconds(stack, silos, *window_distributed).values())
    start_up = silo_start_seconds(stack, distributed_job, silos)
    outside = (wall_distributed - silo_distributed) - (wall_embedded - silo_embedded)
    per_step = (outside - start_up) / max(steps, 1)
    emit(BENCH, "silo_start_up", round(start_up, 2), "s", **common)
    emit(
        BENCH,
        "orchestration_per_step",
        round(per_step, 2),
        "s",
        "<= 1",
        per_step <= 1,
        steps=steps,
        silo_task_seconds={"distributed": round(silo_distributed, 1), "embedded": round(silo_embedded, 1)},
        **common,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scenarios",
        nargs="+",
        type=Path,
        default=[Path("scenarios/smoke.yaml"), Path("scenarios/medical.yaml")],
    )
    args = parser.parse_args()
    start(BENCH)
    stamp = time.strftime("%Y%m%d%H%M%S")
    with tempfile.TemporaryDirectory() as scratch:
        stack = Stack(Path(scratch))
        try:
            run_timed([FEDSILO, "run", "scenarios/smoke.yaml", "--job-name=warm-up"], stack.env)
            for path in args.scenarios:
                compare(stack, path.resolve(), Path(scratch), stamp)
        finally:
            stack.close()


if __name__ == "__main__":
    main()
