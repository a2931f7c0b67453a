"""How reliably and how fast docker/compose.yaml comes up: the stack test's stack, started again
and again. Each start has fresh secrets and ports (tests/containers.py `ComposeStack`, smoke
profile), runs `podman-compose up -d`, waits up to `--limit` s for Prefect's API to answer
/health, notes how often podman restarted each server, and tears everything down. `--load K`
keeps K busy processes running beside it, as a loaded CI machine would.

    python -m bench.stack_start [--starts 10] [--load 2]     # needs podman (make system-deps)
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bench.common import emit, start
from fedsilo.scenario import load_scenario
from tests.containers import ComposeStack, build_fedsilo_image, build_postgres_image
from tests.stack import export_silo_files

BENCH = "stack_start"
SERVERS = ("postgres", "prefect", "mlflow")
SMOKE = Path(__file__).parents[1] / "scenarios" / "smoke.yaml"


def one_start(folder: Path, image: str, silo_files: dict, limit: float) -> tuple[float | None, dict]:
    """Seconds from `up -d` to a healthy Prefect API (None: not within `limit`), and restarts."""
    stack = ComposeStack(folder, image, silo_files)
    stack.compose("down", "--volumes", timeout=300)
    began = time.monotonic()
    stack.compose("up", "-d", timeout=900)
    healthy = None
    while healthy is None and time.monotonic() - began < limit:
        try:
            if stack.prefect_healthy():
                healthy = time.monotonic() - began
        except OSError:
            pass
        time.sleep(1)
    restarts = {service: stack.restarts(service) for service in SERVERS}
    if healthy is None:
        print(stack.diagnosis(), flush=True)
    stack.compose("down", "--volumes", timeout=300)
    return healthy, restarts


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--load", type=int, default=0, help="busy processes beside the stack")
    parser.add_argument("--limit", type=float, default=240, help="seconds a start may take")
    args = parser.parse_args()
    try:
        image, _ = build_fedsilo_image(), build_postgres_image()
    except pytest.skip.Exception as missing:  # the tests' own check: podman cannot run here
        sys.exit(f"bench.stack_start: {missing}")
    start(BENCH)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    seconds = []
    try:
        with tempfile.TemporaryDirectory() as scratch:
            files = export_silo_files(load_scenario(SMOKE), Path(scratch) / "data")
            for index in range(args.starts):
                healthy, restarts = one_start(Path(scratch), image, files, args.limit)
                shown = None if healthy is None else round(healthy, 1)
                emit(BENCH, "start", shown, "s", index=index, load=args.load, restarts=restarts)
                if healthy is not None:
                    seconds.append(healthy)
    finally:
        for hog in hogs:
            hog.kill()
    emit(BENCH, "healthy_starts", len(seconds), f"of {args.starts}", load=args.load)
    if seconds:
        summary = {"median": round(statistics.median(seconds), 1), "max": round(max(seconds), 1)}
        emit(BENCH, "seconds_to_healthy", summary["median"], "s", **summary, load=args.load)


if __name__ == "__main__":
    main()
