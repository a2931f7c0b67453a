"""What crosses the wire: LoRA adapters and 16-bit updates against full float32 updates.

    python -m bench.efficiency                                   # both data sets, IID and α 0.5
    python -m bench.efficiency --datasets sms-spam --partitions iid

For each real text set of bench/quality.py, partition and arm, one FedAvg job through the
engine's Coordinator with in-process silos (3 silos, the same rounds and local steps):

  full      MiniLM fine-tuned whole, float32 updates (the baseline);
  lora      `model.lora` r = 8 on query and value, adapters and head exchanged (its learning rate
            is --lora-learning-rate: adapters start at zero and need larger steps);
  bfloat16  full fine-tuning, updates sent as bf16 changes (`federation.transfer_dtype`).

Reported per arm: final global accuracy, bytes per round (`bytes_exchanged`) and seconds per
round, each as a ratio to `full` measured in the same run.
"""

import argparse
import logging
import tempfile

from bench.common import emit, start
from bench.privacy import budgeted, job
from bench.quality import DATASETS
from fedsilo.scenario import Scenario

BENCH = "efficiency"
ACCURACY_POINTS = 1.0  # LoRA's goal: within 1 point of full fine-tuning
BYTES_RATIO = 100.0  # and at least 100x fewer bytes per round


def arms(scenario: Scenario, lora_learning_rate: float) -> dict[str, Scenario]:
    raw = scenario.model_dump(mode="json")
    lora = {**raw, "model": {**raw["model"], "lora": {"r": 8, "alpha": 16}}}
    lora["federation"] = {**raw["federation"], "learning_rate": lora_learning_rate}
    half = {**raw, "federation": {**raw["federation"], "transfer_dtype": "bfloat16"}}
    return {
        name: Scenario.model_validate(r) for name, r in (("full", raw), ("lora", lora), ("bfloat16", half))
    }


def measure(dataset: str, partition: str, lora_learning_rate: float, scratch: str) -> None:
    base = budgeted(dataset, 3)
    if partition != "iid":
        raw = base.model_dump(mode="json")
        raw["data"]["partition"] = {"kind": "dirichlet", "alpha": float(partition)}
        base = Scenario.model_validate(raw)
    results = {}
    for name, scenario in arms(base, lora_learning_rate).items():
        tracker, seconds = job(scenario, scratch)
        rounds = scenario.federation.rounds
        results[name] = {
            "accuracy": tracker.rounds[rounds]["global_accuracy"],
            "bytes_per_round": tracker.rounds[1]["bytes_exchanged"],
            "seconds_per_round": sum(tracker.rounds[r]["round_seconds"] for r in range(1, rounds + 1))
            / rounds,
            "job_seconds": seconds,
        }
    tag = f"{dataset}_{'iid' if partition == 'iid' else 'alpha' + partition}"
    full = results["full"]
    for name in ("lora", "bfloat16"):
        arm = results[name]
        gap = 100 * (full["accuracy"] - arm["accuracy"])
        fewer = full["bytes_per_round"] / arm["bytes_per_round"]
        emit(
            BENCH,
            f"{name}_accuracy_gap_points_{tag}",
            gap,
            "points",
            target=f"<= {ACCURACY_POINTS}" if name == "lora" else None,
            met=gap <= ACCURACY_POINTS if name == "lora" else None,
            full=full["accuracy"],
            arm=arm["accuracy"],
        )
        emit(
            BENCH,
            f"{name}_bytes_fewer_{tag}",
            fewer,
            "x",
            target=f">= {BYTES_RATIO}" if name == "lora" else None,
            met=fewer >= BYTES_RATIO if name == "lora" else None,
            full=full["bytes_per_round"],
            arm=arm["bytes_per_round"],
        )
        emit(
            BENCH,
            f"{name}_round_seconds_ratio_{tag}",
            arm["seconds_per_round"] / full["seconds_per_round"],
            "x",
            full=full["seconds_per_round"],
            arm=arm["seconds_per_round"],
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--datasets", nargs="+", default=["sms-spam", "twitter-finance"], choices=sorted(DATASETS)
    )
    parser.add_argument("--partitions", nargs="+", default=["iid", "0.5"])
    parser.add_argument("--lora-learning-rate", type=float, default=3e-3)
    args = parser.parse_args()
    logging.getLogger("fedsilo").setLevel(logging.WARNING)
    start(BENCH)
    with tempfile.TemporaryDirectory() as scratch:
        for dataset in args.datasets:
            for partition in args.partitions:
                measure(dataset, partition, args.lora_learning_rate, scratch)


if __name__ == "__main__":
    main()
