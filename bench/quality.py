"""Is federation worth it? Centralized vs each silo alone vs FedAvg on real public data.

For one partition of a data set over N silos (each silo then splits its rows 80/20, as in
fedsilo), three arms get the same budget of E passes over every training example:
  centralized  E epochs on the pooled training rows of all silos,
  local        each silo E epochs on its own rows (its model scored on its own test split),
  fedavg       E rounds of 1 local epoch per silo, through fedsilo's engine (SiloParticipant,
               federation.aggregate), the global model scored on every silo's test split.
Accuracy and macro-F1 are reported per silo and on the union of the silos' test splits.

    python -m bench.quality --dataset pneumonia --partitions iid 1.0 0.5 0.1 --silos 3 10
    python -m bench.quality --dataset twitter-finance --partitions iid 0.5 --silos 3
"""

import argparse
import copy
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from bench.common import cnn_checkpoint, emit, results_dir, save_plot, shared_data, start  # noqa: E402
from fedsilo.federation import JobPaths, aggregate, global_metrics, strategy_for  # noqa: E402
from fedsilo.modeling import EncodedSet  # noqa: E402
from fedsilo.scenario import Scenario  # noqa: E402
from fedsilo.silo import Evaluation, SiloParticipant  # noqa: E402
from fedsilo.training import FitSettings, fit  # noqa: E402
from fedsilo.weights import read_state, write_state  # noqa: E402

BENCH = "quality"
IID_GAP_POINTS = 2.0
SHARE_OF_CENTRALIZED = 0.95


@dataclass(frozen=True)
class Dataset:
    """A real data set from ../shared/data and the fedsilo settings used for it."""

    name: str
    domain: str
    epochs: int  # the budget E: passes over each training example, in every arm

    @property
    def bench(self) -> str:
        return f"{BENCH}-{self.name}"

    def scenario(self, seed: int) -> dict:
        """The model, data source and training settings of this data set's scenarios."""
        raise NotImplementedError


class Pneumonia(Dataset):
    def scenario(self, seed):
        return {
            "model": {"kind": "cnn", "source": str(cnn_checkpoint())},
            "data": {
                "source": {"kind": "npz", "path": str(shared_data("pneumoniamnist", "pneumoniamnist.npz"))},
                "labels": ["0", "1"],
            },
            "federation": {"batch_size": 32, "learning_rate": 1e-3},
        }


class TwitterFinance(Dataset):
    rows = 1200  # a stratified sample: MiniLM on 2 CPU cores makes ~4 steps a second

    def scenario(self, seed):
        return {
            "model": {"kind": "bert", "source": "packaged:all-MiniLM-L6-v2", "max_length": 64},
            "data": {"source": {"kind": "csv", "path": str(self.sample(seed))}},
            "federation": {"batch_size": 16, "learning_rate": 1e-4},
        }

    def sample(self, seed: int) -> Path:
        path = results_dir() / "data" / f"twitter-finance-{self.rows}-{seed}.csv"
        if not path.exists():
            frame = pd.read_csv(shared_data("twitter_financial_news_sentiment", "data.csv"))
            rows, _ = train_test_split(
                frame, train_size=self.rows, stratify=frame["label"], random_state=seed
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            rows[["text", "label"]].to_csv(path, index=False)
        return path


DATASETS = {
    "pneumonia": Pneumonia("pneumonia", "medical", epochs=8),
    "twitter-finance": TwitterFinance("twitter-finance", "finance", epochs=3),
}


def build_scenario(dataset: Dataset, partition: str, silos: int, seed: int) -> Scenario:
    raw = dataset.scenario(seed)
    raw["data"]["partition"] = (
        {"kind": "iid"} if partition == "iid" else {"kind": "dirichlet", "alpha": float(partition)}
    )
    raw["federation"] |= {"rounds": dataset.epochs, "local_epochs": 1, "seed": seed}
    return Scenario.model_validate(
        raw
        | {
            "name": f"bench-{dataset.name}",
            "domain": dataset.domain,
            "silos": [{"name": f"silo-{k:02d}"} for k in range(silos)],
            "evaluation": {"test_fraction": 0.2},
            "tracking": {"log_models": False},
        }
    )


def pooled(sets: list[EncodedSet]) -> EncodedSet:
    """The union of several silos' encoded training sets, as centralized training sees it."""
    if "pixel_values" in sets[0].features:
        features = {"pixel_values": torch.cat([s.features["pixel_values"] for s in sets])}
    else:
        features = {"input_ids": [row for s in sets for row in s.features["input_ids"]]}
    return EncodedSet(features, torch.cat([s.labels for s in sets]), pad=sets[0].pad)


def centralized(
    scenario: Scenario, silos: list[SiloParticipant], epochs: int, paths: JobPaths, start_ref
) -> list[Evaluation]:
    """One model trained on the pooled rows, scored by each silo on its test split."""
    model = copy.deepcopy(silos[0].model)
    model.load_state_dict(read_state(start_ref))
    federation = scenario.federation
    settings = FitSettings(
        epochs, federation.batch_size, federation.learning_rate, federation.optimizer, federation.seed
    )
    fit(model, pooled([s.train for s in silos]), settings)
    trained = write_state(model.state_dict(), f"{paths.root}/centralized.safetensors")
    return [s.evaluate(trained) for s in silos]


def local_only(scenario: Scenario, silos: list[SiloParticipant], epochs: int, paths: JobPaths, start_ref):
    """Each silo trains alone for the whole budget; scored on its own test split."""
    alone = scenario.model_copy(
        update={"federation": scenario.federation.model_copy(update={"local_epochs": epochs})}
    )
    evaluations = []
    for silo in silos:
        silo.scenario = alone
        evaluations.append(silo.fit(start_ref, 1, paths.update_uri(0, silo.silo)).local)
        silo.scenario = scenario
    return evaluations


def fedavg(
    scenario: Scenario, silos: list[SiloParticipant], paths: JobPaths, start_ref
) -> list[list[Evaluation]]:
    """Evaluations of the global model after each round (index 0: the pretrained model)."""
    strategy, current = strategy_for(scenario), start_ref
    history = [[s.evaluate(current) for s in silos]]
    for round_index in range(1, scenario.federation.rounds + 1):
        reports = [s.fit(current, round_index, paths.update_uri(round_index, s.silo)) for s in silos]
        current, _ = aggregate(strategy, current, reports, paths.global_uri(round_index))
        history.append([s.evaluate(current) for s in silos])
    return history


def run_setting(dataset: Dataset, partition: str, n_silos: int, seed: int, scratch: str) -> dict:
    scenario = build_scenario(dataset, partition, n_silos, seed)
    began = time.perf_counter()
    silos = [SiloParticipant(scenario, name) for name in scenario.silo_names()]
    paths = JobPaths.under(scratch, f"{dataset.name}-{partition}-{n_silos}")
    start_ref = write_state(silos[0].model.state_dict(), paths.global_uri(0))
    arms = {
        "centralized": centralized(scenario, silos, dataset.epochs, paths, start_ref),
        "local": local_only(scenario, silos, dataset.epochs, paths, start_ref),
    }
    history = fedavg(scenario, silos, paths, start_ref)
    arms["fedavg"] = history[-1]
    return {
        "arms": arms,
        "curve": [global_metrics(h)["accuracy"] for h in history],
        "seconds": time.perf_counter() - began,
        "train_sizes": [s.num_examples for s in silos],
    }


def report(dataset: Dataset, partition: str, n_silos: int, result: dict) -> None:
    bench = dataset.bench
    tag = f"{dataset.name}_{'iid' if partition == 'iid' else 'alpha' + partition}_{n_silos}silos"
    context = {
        "dataset": dataset.name,
        "partition": partition,
        "silos": n_silos,
        "epochs": dataset.epochs,
        "train_sizes": result["train_sizes"],
    }
    union = {}
    for arm, evaluations in result["arms"].items():
        union[arm] = global_metrics(evaluations)
        emit(
            bench,
            f"{tag}_{arm}",
            round(union[arm]["accuracy"], 4),
            "accuracy",
            arm=arm,
            f1_macro=round(union[arm]["f1_macro"], 4),
            per_silo={
                e.silo: {"accuracy": round(e.accuracy, 4), "f1_macro": round(e.f1_macro, 4)}
                for e in evaluations
            },
            **context,
        )
    goal = SHARE_OF_CENTRALIZED * union["centralized"]["accuracy"]
    reached = next((r for r, acc in enumerate(result["curve"]) if acc >= goal), None)
    emit(
        bench,
        f"{tag}_rounds_to_95pct_centralized",
        reached,
        "rounds",
        curve=[round(a, 4) for a in result["curve"]],
        goal_accuracy=round(goal, 4),
        **context,
    )
    if partition == "iid":
        gap = 100 * (union["centralized"]["accuracy"] - union["fedavg"]["accuracy"])
        emit(
            bench,
            f"{tag}_fedavg_gap_to_centralized",
            round(gap, 2),
            "points",
            target=f"<= {IID_GAP_POINTS} points",
            met=gap <= IID_GAP_POINTS,
            **context,
        )
    if partition == "0.5":
        margins = {
            f.silo: round(100 * (f.accuracy - own.accuracy), 2)
            for f, own in zip(result["arms"]["fedavg"], result["arms"]["local"])
        }
        emit(
            bench,
            f"{tag}_fedavg_minus_local_worst_silo",
            min(margins.values()),
            "points",
            target="> 0 on every silo's own test split",
            met=min(margins.values()) > 0,
            margins=margins,
            **context,
        )
    emit(bench, f"{tag}_seconds", round(result["seconds"], 1), "s", **context)


def plot(dataset: Dataset, results: dict) -> Path:
    """FedAvg's union accuracy by round against the centralized and local-only levels.

    One row per silo count, one column per partition.
    """
    counts = sorted({n for _, n in results})
    partitions = list(dict.fromkeys(p for p, _ in results))
    figure, grid = plt.subplots(
        len(counts), len(partitions), figsize=(3.6 * len(partitions), 3.2 * len(counts)), squeeze=False
    )
    for (partition, n_silos), result in results.items():
        axes = grid[counts.index(n_silos)][partitions.index(partition)]
        levels = {arm: global_metrics(e)["accuracy"] for arm, e in result["arms"].items()}
        axes.plot(range(len(result["curve"])), result["curve"], "o-", color="C0", label="FedAvg (global)")
        axes.axhline(levels["centralized"], color="black", linestyle="--", label="centralized")
        axes.axhline(levels["local"], color="C3", linestyle=":", label="each silo alone")
        title = "IID" if partition == "iid" else f"Dirichlet α={partition}"
        axes.set(title=f"{title}, {n_silos} silos", xlabel="round (= epochs of budget)", ylim=(0, 1.02))
        axes.grid(alpha=0.3)
    for row in grid:
        row[0].set_ylabel("accuracy, union of test splits")
    grid[0][0].legend(fontsize=8, loc="lower right")
    figure.suptitle(f"{dataset.name}: same budget of {dataset.epochs} epochs per example")
    return save_plot(figure, f"quality-{dataset.name}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="pneumonia")
    parser.add_argument("--partitions", nargs="+", default=["iid", "1.0", "0.5", "0.1"])
    parser.add_argument("--silos", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    dataset = DATASETS[args.dataset]
    start(dataset.bench)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for n_silos in args.silos:
            for partition in args.partitions:
                result = run_setting(dataset, partition, n_silos, args.seed, scratch)
                report(dataset, partition, n_silos, result)
                results[(partition, n_silos)] = result
    emit(dataset.bench, "plot", 0, "", path=str(plot(dataset, results)))


if __name__ == "__main__":
    main()
