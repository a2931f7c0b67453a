"""Orchestration overhead: `fedsilo run` (embedded: Prefect + MLflow) against a bare PyTorch script.

Both run the same scenario with the same seeds, each as a fresh process, for R1 and R2 rounds.
A line through the two wall times splits each side into a fixed start-up cost (intercept) and a
per-round cost (slope); the overhead is fedsilo's slope over the bare slope, and the extra
start-up is the difference of intercepts. Both sides must end with the same global accuracy,
which shows they did the same work. A smoke job first warms the page cache and the stores.

    python -m bench.overhead [--scenario scenarios/medical.yaml] [--rounds 1 3]
"""

import argparse
import json
import sys
import tempfile
import time

from bench.common import FEDSILO, emit, run_timed, scratch_env, start
from fedsilo.tracking import metric_by_round

BENCH = "overhead"
ROUND_TARGET, STARTUP_TARGET = 0.05, 5.0


# what the bare script does not do: the linear schedule, the validation split, alone and kept models
SAME_WORK_AS_BARE = (
    "federation.learning_rate_schedule=constant",
    "evaluation.validation_fraction=0",
    "evaluation.alone=false",
    "evaluation.keep_best_round=false",
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", default="scenarios/medical.yaml")
    parser.add_argument("--rounds", type=int, nargs=2, default=[1, 3])
    args = parser.parse_args()
    start(BENCH)
    stamp = time.strftime("%Y%m%d%H%M%S")
    wall, accuracy = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        env = scratch_env(scratch)
        run_timed([FEDSILO, "run", "scenarios/smoke.yaml"], env)  # warm-up: stores created, files cached
        for rounds in args.rounds:
            name = f"bench-overhead-{stamp}-r{rounds}"
            named = ["--set", f"tracking.experiment={name}", "--set", f"tracking.registered_model={name}"]
            named += [arg for setting in SAME_WORK_AS_BARE for arg in ("--set", setting)]
            wall["fedsilo", rounds], _ = run_timed(
                [FEDSILO, "run", args.scenario, "--rounds", str(rounds), *named], env
            )
            history = metric_by_round(name, tracking_uri=env["MLFLOW_TRACKING_URI"])
            accuracy["fedsilo", rounds] = [m.value for m in history]
            wall["bare", rounds], out = run_timed(
                [sys.executable, "-m", "bench.bare_federation", args.scenario, "--rounds", str(rounds)], env
            )
            accuracy["bare", rounds] = json.loads(out.strip().splitlines()[-1])["global_accuracy"]
    r1, r2 = args.rounds
    per_round = {side: (wall[side, r2] - wall[side, r1]) / (r2 - r1) for side in ("fedsilo", "bare")}
    startup = {side: wall[side, r1] - r1 * per_round[side] for side in per_round}
    for side in per_round:
        emit(
            BENCH,
            f"{side}_wall",
            round(wall[side, r2], 2),
            "s",
            rounds=r2,
            **{f"wall_r{r1}": round(wall[side, r1], 2)},
        )
        emit(BENCH, f"{side}_seconds_per_round", round(per_round[side], 2), "s")
        emit(
            BENCH,
            f"{side}_startup",
            round(startup[side], 2),
            "s",
            note="intercept: imports, data, model, teardown",
        )
    same = all(
        abs(a - b) < 1e-9 for r in args.rounds for a, b in zip(accuracy["fedsilo", r], accuracy["bare", r])
    )
    emit(
        BENCH,
        "same_global_accuracy",
        same,
        "bool",
        fedsilo=accuracy["fedsilo", r2],
        bare=accuracy["bare", r2],
    )
    overhead = per_round["fedsilo"] / per_round["bare"] - 1
    emit(
        BENCH,
        "per_round_overhead",
        round(overhead, 4),
        "fraction of the bare round",
        target=f"< {ROUND_TARGET:.0%}",
        met=overhead < ROUND_TARGET,
        ratio=round(per_round["fedsilo"] / per_round["bare"], 4),
    )
    extra = startup["fedsilo"] - startup["bare"]
    emit(
        BENCH,
        "startup_overhead",
        round(extra, 2),
        "s",
        target=f"< {STARTUP_TARGET:.0f} s",
        met=extra < STARTUP_TARGET,
    )
    emit(BENCH, "wall_ratio", round(wall["fedsilo", r2] / wall["bare", r2], 3), "ratio", rounds=r2)


if __name__ == "__main__":
    main()
