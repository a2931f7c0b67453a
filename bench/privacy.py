"""What privacy costs: secure aggregation's time, bytes and rounding error, and the accuracy of
DP-SGD at the silos and of central DP, each next to plain FedAvg in the same run.

    python -m bench.privacy secagg                  # 3 and 10 silos, CNN and MiniLM; one dropout
    python -m bench.privacy dp --dataset pneumonia  # accuracy against epsilon (DP-SGD)
    python -m bench.privacy dp --dataset sms-spam --epsilons 1 4 8
    python -m bench.privacy central                 # client-level DP with 3 silos

Every arm is the engine's own job with in-process silos (fedsilo.transport.InProcess) on the
data sets and settings of bench/quality.py (IID partitions, FedAvg, the same rounds and local
steps); "off" and "on" differ only in `privacy.*`.
"""

import argparse
import logging
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from bench.common import emit, save_plot, start  # noqa: E402
from bench.quality import DATASETS, build_scenario, with_budget  # noqa: E402
from fedsilo.engine import Coordinator, NullTracker  # noqa: E402
from fedsilo.paths import JobPaths  # noqa: E402
from fedsilo.privacy import secagg  # noqa: E402
from fedsilo.privacy.secagg_steps import Mask  # noqa: E402
from fedsilo.scenario import Scenario  # noqa: E402
from fedsilo.silo import participant, release_participants  # noqa: E402
from fedsilo.transport import InProcess  # noqa: E402

BENCH = "privacy"  # results go to results/privacy-<part>.jsonl


class ModelKeeper(NullTracker):
    """Keeps round 1's global model (to compare secure and plain aggregation) and every round."""

    def __init__(self) -> None:
        super().__init__()
        self.first_round = None

    def log_global_model(self, round_index, weights_path, meta, extra_files):
        if round_index == 1:
            self.first_round = load_file(weights_path)
        return None


class LostAfterMasking:
    """Real silos in this process (fedsilo.silo_steps.handle); `silo` is lost in each round's
    masking step after it masked (its vector written, its answer never given): a dropout."""

    def __init__(self, silo: str):
        self.silo = silo

    def __call__(self, scenario, silo, step):
        from fedsilo.silo_steps import handle

        reply = handle(scenario, silo, step)
        if silo == self.silo and isinstance(step, Mask):
            raise TimeoutError(f"{silo} was lost after masking")
        return reply


def job(scenario: Scenario, scratch: str, drop: str = "", **privacy) -> tuple[ModelKeeper, float]:
    """One FedAvg job with the given `privacy` section (and `drop` lost after masking, if named);
    its tracker and wall seconds."""
    raw = scenario.model_dump(mode="json")
    raw["privacy"] = privacy
    raw["tracking"]["log_models"] = True  # the keeper reads round 1's model; nothing is uploaded
    raw["evaluation"]["personalize_steps"] = 0
    if drop:  # the round goes on without it
        raw["federation"]["min_silos"] = len(raw["silos"]) - 1
    scenario = Scenario.model_validate(raw)
    paths = JobPaths.under(scratch, f"job-{time.monotonic_ns()}")
    tracker = ModelKeeper()
    began = time.perf_counter()
    try:
        transport = InProcess(LostAfterMasking(drop) if drop else None)
        Coordinator(scenario, "bench", transport, tracker, paths).run()
    finally:
        release_participants()
    return tracker, time.perf_counter() - began


def budgeted(dataset_name: str, silos: int, rounds: int | None = None, seed: int = 0) -> Scenario:
    """bench/quality.py's IID FedAvg scenario for the data set, optionally fewer rounds."""
    dataset = DATASETS[dataset_name]
    scenario = build_scenario(dataset, "iid", silos, seed)
    sizes = [participant(scenario, name).num_examples for name in scenario.silo_names()]
    release_participants()
    scenario = with_budget(scenario, dataset, sizes, "fedavg")
    if rounds:
        raw = scenario.model_dump(mode="json")
        raw["federation"]["rounds"] = rounds
        scenario = Scenario.model_validate(raw)
    return scenario


def max_difference(a, b) -> tuple[float, float]:
    """The largest absolute difference between two models' floating tensors, and float32's
    spacing at the largest weight (one rounding step of the plain model's arithmetic)."""
    floats = [n for n, t in a.items() if t.is_floating_point()]
    error = max(float((a[n].double() - b[n].double()).abs().max()) for n in floats)
    largest = max(float(b[n].abs().max()) for n in floats)
    return error, float(np.spacing(np.float32(largest)))


def secagg_cost(settings: list[tuple[str, int, int]], scratch: str) -> None:
    """Round time and bytes per round with secure aggregation off, on, and on with one silo lost
    after masking each round (double masking recovers it), and the error of the secure global
    model against the plain one after round 1."""
    for dataset_name, silos, rounds in settings:
        scenario = budgeted(dataset_name, silos, rounds)
        plain, plain_seconds = job(scenario, scratch)
        secure, secure_seconds = job(scenario, scratch, secure_aggregation=True)
        lost = scenario.silo_names()[-1]
        dropout, _ = job(scenario, scratch, drop=lost, secure_aggregation=True)
        tag = f"{dataset_name}_{silos}silos"
        arms = (("off", plain), ("on", secure), ("on_one_dropout", dropout))
        per_round = {
            name: sum(t.rounds[r]["round_seconds"] for r in range(1, rounds + 1)) / rounds for name, t in arms
        }
        sent = {name: t.rounds[1]["bytes_exchanged"] for name, t in arms}
        accuracy = {name: t.rounds[rounds]["global_accuracy"] for name, t in arms}
        emit(  # the default norm bound must not tax an honest federation
            f"{BENCH}-secagg",
            f"secagg_accuracy_points_{tag}",
            100 * (accuracy["on"] - accuracy["off"]),
            "points",
            **accuracy,
        )
        emit(
            f"{BENCH}-secagg",
            f"secagg_round_seconds_ratio_{tag}",
            per_round["on"] / per_round["off"],
            "x",
            **per_round,
        )
        emit(f"{BENCH}-secagg", f"secagg_bytes_ratio_{tag}", sent["on"] / sent["off"], "x", **sent)
        dropout_ratio = per_round["on_one_dropout"] / per_round["off"]
        emit(f"{BENCH}-secagg", f"secagg_dropout_round_seconds_ratio_{tag}", dropout_ratio, "x", **per_round)
        total = sum(participant(scenario, n).num_examples for n in scenario.silo_names())
        release_participants()
        bound = secagg.rounding_bound(silos, secagg.Encoding(1.0, total), total)
        error, spacing = max_difference(secure.first_round, plain.first_round)
        emit(
            f"{BENCH}-secagg",
            f"secagg_max_error_{tag}",
            error,
            "abs",
            float32_spacing_at_largest_weight=spacing,
            rounding_bound=bound,
            job_seconds=secure_seconds,
        )


def dp_accuracy(dataset_name: str, epsilons: list[float], scratch: str) -> dict:
    """Final global accuracy of FedAvg with DP-SGD at each epsilon, and without DP."""
    scenario = budgeted(dataset_name, 3)
    curves = {}
    for epsilon in [None, *epsilons]:
        privacy = {} if epsilon is None else {"dp": {"target_epsilon": epsilon, "delta": 1e-5}}
        tracker, seconds = job(scenario, scratch, **privacy)
        rounds = scenario.federation.rounds
        curve = [tracker.rounds[r]["global_accuracy"] for r in range(rounds + 1)]
        label = "no DP" if epsilon is None else f"epsilon {epsilon:g}"
        curves[label] = curve
        spent = tracker.rounds[rounds].get("max_silo_epsilon")
        emit(
            f"{BENCH}-dp-{dataset_name}",
            f"dp_accuracy_{dataset_name}_{label.replace(' ', '_')}",
            curve[-1],
            "accuracy",
            epsilon_spent=spent,
            f1_macro=tracker.rounds[rounds]["global_f1_macro"],
            seconds=seconds,
            rounds=rounds,
        )
    return curves


def central_accuracy(dataset_name: str, noise: list[float], clipping_norm: float, scratch: str) -> dict:
    """Final global accuracy with client-level central DP over 3 silos, and the epsilon it gives."""
    scenario = budgeted(dataset_name, 3)
    curves = {}
    for sigma in [None, *noise]:
        privacy = (
            {}
            if sigma is None
            else {"central_dp": {"noise_multiplier": sigma, "clipping_norm": clipping_norm}}
        )
        tracker, seconds = job(scenario, scratch, **privacy)
        rounds = scenario.federation.rounds
        curve = [tracker.rounds[r]["global_accuracy"] for r in range(rounds + 1)]
        label = "no DP" if sigma is None else f"sigma {sigma:g}"
        curves[label] = curve
        emit(
            f"{BENCH}-central-{dataset_name}",
            f"central_dp_accuracy_{dataset_name}_{label.replace(' ', '_')}",
            curve[-1],
            "accuracy",
            central_epsilon=tracker.rounds[rounds].get("central_epsilon"),
            f1_macro=tracker.rounds[rounds]["global_f1_macro"],
            clipping_norm=clipping_norm,
            seconds=seconds,
        )
    return curves


def plot(curves: dict[str, list[float]], title: str, name: str) -> Path:
    figure, axes = plt.subplots(figsize=(6, 4))
    for label, curve in curves.items():
        axes.plot(
            range(len(curve)), curve, marker="o", label=label, linestyle="--" if label == "no DP" else "-"
        )
    axes.set(xlabel="round", ylabel="global accuracy (union of test splits)", title=title)
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.legend()
    return save_plot(figure, name)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["secagg", "dp", "central"])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="pneumonia")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 4.0, 8.0])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.3, 1.0])
    parser.add_argument("--clipping-norm", type=float, default=1.0)
    args = parser.parse_args()
    logging.getLogger("fedsilo").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as scratch:
        if args.what == "secagg":
            start(f"{BENCH}-secagg")
            secagg_cost(
                [("pneumonia", 3, 2), ("pneumonia", 10, 2), ("sms-spam", 3, 1), ("sms-spam", 10, 1)], scratch
            )
        elif args.what == "dp":
            start(f"{BENCH}-dp-{args.dataset}")
            curves = dp_accuracy(args.dataset, args.epsilons, scratch)
            plot(curves, f"{args.dataset}: FedAvg with DP-SGD, 3 silos", f"privacy-dp-{args.dataset}")
        else:
            start(f"{BENCH}-central-{args.dataset}")
            curves = central_accuracy(args.dataset, args.noise, args.clipping_norm, scratch)
            plot(curves, f"{args.dataset}: central DP, 3 silos", f"privacy-central-{args.dataset}")


if __name__ == "__main__":
    main()
