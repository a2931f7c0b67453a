"""Where a `fedsilo run` spends its time: cProfile around the CLI, summed by the pieces that matter.

The overhead and scale benchmarks say how much time Prefect, MLflow and the weight exchange add;
this says where it goes. It runs the job in this process under cProfile (which slows every
Python call a little) and prints one JSON line per piece: calls, cumulative seconds, ms per call.

    python -m bench.profile_run --scenario scenarios/medical.yaml --rounds 2
    python -m bench.profile_run --scale-silos 50 --rounds 2     # bench.scale's PneumoniaMNIST job
"""

import argparse
import cProfile
import os
import pstats
import tempfile
from pathlib import Path

from bench.common import cnn_checkpoint, emit, scratch_env, shared_data, start

BENCH = "profile"
# (label, file suffix, function) of cProfile entries; "~" is a C function
PIECES = [
    ("whole run", "fedsilo/cli.py", "cmd_run"),
    ("waiting for the ephemeral Prefect server", "fedsilo/cli.py", "wait_ready"),
    ("MLflow tracker set-up", "fedsilo/tracking/tracker.py", "__init__"),
    ("Prefect task runs (with their functions)", "prefect/task_engine.py", "run_task"),
    ("task functions alone", "prefect/task_engine.py", "call_task_fn"),
    ("local training (training.fit)", "fedsilo/training.py", "fit"),
    ("model evaluation forward passes (training.predict)", "fedsilo/training.py", "predict"),
    ("metrics per evaluation (sklearn)", "fedsilo/metrics.py", "classification_metrics"),
    ("weights read with checksum (read_state)", "fedsilo/weights.py", "read_state"),
    ("weights written (write_state)", "fedsilo/weights.py", "write_state"),
    ("sha256 hashing", "~", "<built-in method _hashlib.openssl_sha256>"),
    ("aggregation (Aggregation.aggregate)", "fedsilo/engine/aggregation.py", "aggregate"),
    ("LoggedModel per round", "fedsilo/tracking/tracker.py", "log_global_model"),
    ("silo metrics to MLflow per round", "fedsilo/tracking/tracker.py", "log_round"),
    ("silo x silo matrix (evaluations, table, plot)", "pipelines/flows.py", "_compare_silos"),
]


def piece(stats: pstats.Stats, suffix: str, function: str) -> tuple[int, float]:
    """Calls and cumulative seconds of every profiled function matching (file suffix, name)."""
    calls, seconds = 0, 0.0
    for (file, _, name), (_, total_calls, _, cumulative, _) in stats.stats.items():
        if name == function and file.endswith(suffix):
            calls, seconds = calls + total_calls, seconds + cumulative
    return calls, seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", default="scenarios/medical.yaml")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--scale-silos", type=int, help="profile bench.scale's job with this many silos")
    args = parser.parse_args()
    start(BENCH)
    with tempfile.TemporaryDirectory() as scratch:
        os.environ.update(scratch_env(scratch))
        scenario = args.scenario
        if args.scale_silos:
            from bench.scale import scenario_file

            npz = shared_data("pneumoniamnist", "pneumoniamnist.npz")
            scenario = str(
                scenario_file(Path(scratch), args.scale_silos, args.rounds, npz, cnn_checkpoint(), "profile")
            )
        from fedsilo.cli import main as fedsilo_main

        profiler = cProfile.Profile()
        code = profiler.runcall(fedsilo_main, ["run", scenario, "--rounds", str(args.rounds)])
        if code:
            raise SystemExit(f"fedsilo run {scenario} exited {code}")
    stats = pstats.Stats(profiler)
    for label, suffix, function in PIECES:
        calls, seconds = piece(stats, suffix, function)
        emit(
            BENCH,
            label,
            round(seconds, 3),
            "s",
            calls=calls,
            ms_per_call=round(1000 * seconds / calls, 2) if calls else None,
            scenario=scenario,
            rounds=args.rounds,
        )
    tasks, with_functions = piece(stats, "prefect/task_engine.py", "run_task")
    _, functions = piece(stats, "prefect/task_engine.py", "call_task_fn")
    emit(
        BENCH,
        "Prefect per task run, beyond its function",
        round(1000 * (with_functions - functions) / tasks, 2),
        "ms",
        tasks=tasks,
    )


if __name__ == "__main__":
    main()
