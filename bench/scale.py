"""Scale: seconds per round against the number of silos, at a fixed total amount of data.

PneumoniaMNIST (all 3,166 images) split IID over 2, 10 and 50 silos, the digits-pretrained CNN,
`fedsilo run` in embedded mode with Prefect and MLflow, 3 rounds. A round's wall time is the gap
between the MLflow timestamps of consecutive `global_accuracy` points, so it includes fitting,
aggregating, evaluating and logging; round 1 is left out as warm-up. To show that cost follows
data, 10 silos also run on half of the images.

    python -m bench.scale [--silos 2 10 50] [--rounds 3]
"""

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from bench.common import (  # noqa: E402
    FEDSILO,
    cnn_checkpoint,
    emit,
    results_dir,
    run_timed,
    save_plot,
    scratch_env,
    shared_data,
    start,
)
from fedsilo.tracking import metric_by_round  # noqa: E402

BENCH = "scale"
HALF_DATA_SILOS = 10


def half_of(npz: Path) -> Path:
    """Every other image of each split, as a MedMNIST NPZ of its own."""
    path = results_dir() / "data" / "pneumoniamnist-half.npz"
    if not path.exists():
        arrays = np.load(npz)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **{key: arrays[key][::2] for key in arrays.files})
    return path


def scenario_file(folder: Path, silos: int, rounds: int, npz: Path, checkpoint: Path, tag: str) -> Path:
    scenario = {
        "name": f"bench-scale-{tag}",
        "domain": "medical",
        "model": {"kind": "cnn", "source": str(checkpoint)},
        "data": {
            "source": {"kind": "npz", "path": str(npz)},
            "partition": {"kind": "iid"},
            "labels": ["0", "1"],
        },
        "silos": [{"name": f"hospital-{k:02d}"} for k in range(silos)],
        "federation": {"rounds": rounds, "batch_size": 32, "learning_rate": 1e-3, "seed": 0},
        "evaluation": {"test_fraction": 0.2},
    }
    path = folder / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(scenario, sort_keys=False))
    return path


def round_seconds(tracking_uri: str, experiment: str) -> list[float]:
    """Wall seconds of each round, from the timestamps of the job's global_accuracy points."""
    stamps = [m.timestamp for m in metric_by_round(experiment, tracking_uri=tracking_uri)]
    return [(later - earlier) / 1000 for earlier, later in zip(stamps, stamps[1:])]


def plot(per_round: dict[int, float], half: float | None) -> Path:
    figure, axes = plt.subplots(figsize=(5.5, 3.8))
    counts = sorted(per_round)
    axes.plot(counts, [per_round[c] for c in counts], "o-", label="all 3,166 images")
    if half is not None:
        axes.plot([HALF_DATA_SILOS], [half], "s", color="C3", label="half the images")
    axes.set(
        xscale="log",
        xlabel="silos (log scale)",
        ylabel="seconds per round",
        ylim=(0, None),
        title="Round time at fixed total data (embedded, CNN)",
    )
    axes.set_xticks(counts, [str(c) for c in counts])
    axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # only the silo counts
    axes.grid(alpha=0.3)
    axes.legend()
    return save_plot(figure, "scale")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--silos", type=int, nargs="+", default=[2, 10, 50])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    start(BENCH)
    checkpoint = cnn_checkpoint()
    npz = shared_data("pneumoniamnist", "pneumoniamnist.npz")
    per_round, half = {}, None
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        env = scratch_env(scratch)
        jobs = [(n, npz, f"{n}-silos") for n in args.silos] + [(HALF_DATA_SILOS, half_of(npz), "half-data")]
        for silos, data, tag in jobs:
            wall, _ = run_timed(
                [FEDSILO, "run", str(scenario_file(folder, silos, args.rounds, data, checkpoint, tag))], env
            )
            rounds = round_seconds(env["MLFLOW_TRACKING_URI"], f"bench-scale-{tag}")
            steady = float(np.mean(rounds[1:] or rounds))
            emit(
                BENCH,
                f"{tag}_seconds_per_round",
                round(steady, 2),
                "s",
                silos=silos,
                job_wall_s=round(wall, 1),
                rounds_s=[round(r, 2) for r in rounds],
                completed=True,
            )
            if tag == "half-data":
                half = steady
            else:
                per_round[silos] = steady
    low, high = min(per_round), max(per_round)
    growth = per_round[high] / per_round[low]
    slope = (per_round[high] - per_round[low]) / (high - low)
    emit(
        BENCH,
        "silo_count_growth",
        round(growth, 3),
        "ratio",
        note=f"seconds per round at {high} silos over {low} silos, same total data",
        seconds_per_extra_silo=round(slope, 3),
    )
    if half is not None and HALF_DATA_SILOS in per_round:
        emit(
            BENCH,
            "half_data_ratio",
            round(half / per_round[HALF_DATA_SILOS], 3),
            "ratio",
            note=f"{HALF_DATA_SILOS} silos: seconds per round on half the images over all of them",
        )
    emit(BENCH, "plot", 0, "", path=str(plot(per_round, half)))


if __name__ == "__main__":
    main()
