"""Distributed against embedded: the same scenario through real servers and one worker per silo.

A `prefect server` and an `mlflow server` (as in tests/stack.py) serve both sides, so the ratio
isolates what distribution adds: silo processes started by their workers, steps sent as Prefect
run inputs, weights through the tracking server's artifact store. Each silo's worker reads only
its own CSV. The workers are registered before the clock starts (a silo's worker is up before a
job is, in practice); both sides must end with the same global accuracy.

Figures per scenario: wall time of each side, their ratio (goal <= 1.5x), and the seconds of
orchestration per step: (distributed - embedded wall time) / steps a silo served.

    python -m bench.distributed [--scenarios scenarios/smoke.yaml scenarios/medical.yaml]
"""

import argparse
import re
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings

from bench.common import FEDSILO, emit, run_timed, start
from fedsilo.scenario import load_scenario
from tests.stack import Stack, export_silo_files, stop

BENCH = "distributed"
RATIO_TARGET = 1.5


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


def compare(stack: Stack, path: Path, scratch: Path, stamp: str) -> None:
    scenario = load_scenario(path)
    files = export_silo_files(scenario, scratch / "data" / scenario.name)
    workers = [stack.worker(silo, path, files[silo]) for silo in scenario.silo_names()]
    try:
        wait_for_deployments(stack, scenario.silo_names())
        distributed_job = f"distributed-{stamp}"
        wall_distributed, _ = run_timed(
            [FEDSILO, "run", str(path), "--mode=distributed", f"--job-name={distributed_job}"], stack.env
        )
    finally:
        for worker in workers:
            stop(worker)
    embedded_job = f"embedded-{stamp}"
    wall_embedded, _ = run_timed([FEDSILO, "run", str(path), f"--job-name={embedded_job}"], stack.env)
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
    per_step = (wall_distributed - wall_embedded) / max(steps, 1)
    emit(
        BENCH, "orchestration_per_step", round(per_step, 2), "s", "<= 1", per_step <= 1, steps=steps, **common
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
