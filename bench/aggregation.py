"""FedAvg cost over K = 2..128 updates of a BERT-base-sized model (110M parameters).

Each K runs in its own process so its peak resident memory is its own. Updates are synthetic
and in memory (two distinct random states dealt out in turn with varied example counts): what
is timed is fedsilo's WeightedSum over K updates plus the server step, and the bandwidth is
compared with a plain tensor copy measured in the same run.

    python -m bench.aggregation [--ks 2 8 32 128]
"""

import argparse
import subprocess
import sys
import time

import torch
from transformers import BertConfig, BertForSequenceClassification

from bench.common import emit, peak_rss_gib, start
from fedsilo.strategies import FedAvg, WeightedSum

BENCH = "aggregation"
RSS_FLAT_LIMIT = 1.10  # peak RSS at the largest K may exceed the smallest K's by at most 10%


def bert_base_shapes() -> dict[str, torch.Size]:
    """The tensor names and shapes of BERT-base with a 2-label head, without allocating it."""
    with torch.device("meta"):
        model = BertForSequenceClassification(BertConfig(num_labels=2))
    return {name: t.shape for name, t in model.state_dict().items() if t.is_floating_point()}


def synthetic_updates(shapes: dict[str, torch.Size], count: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [{n: torch.randn(s, generator=generator) for n, s in shapes.items()} for _ in range(count)]


def copy_bandwidth(numel: int, repeats: int = 5) -> float:
    """Best GB/s of copying `numel` float32 into a preallocated buffer (bytes copied per second)."""
    source, target = torch.randn(numel), torch.empty(numel)
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - began)
    return numel * 4 / best / 1e9


def child(k: int) -> None:
    """Aggregate K updates; print seconds and memory as one JSON-ish line for the parent."""
    updates = synthetic_updates(bert_base_shapes(), 2)
    baseline = peak_rss_gib()
    sizes = torch.randint(50, 5000, (k,), generator=torch.Generator().manual_seed(k)).tolist()
    began = time.perf_counter()
    total = WeightedSum()
    for index, n in enumerate(sizes):
        total.add(updates[index % 2], n)
    summed = time.perf_counter()
    new_global = FedAvg().apply(updates[0], total.mean())
    finished = time.perf_counter()
    assert len(new_global) == len(updates[0])
    print(f"{summed - began} {finished - summed} {baseline} {peak_rss_gib()}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 8, 32, 128])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    start(BENCH)
    shapes = bert_base_shapes()
    params = sum(s.numel() for s in shapes.values())
    update_gb = params * 4 / 1e9
    emit(BENCH, "model_parameters", params, "parameters", update_gb=round(update_gb, 3))
    bandwidth = copy_bandwidth(params)
    emit(BENCH, "memcpy_bandwidth", round(bandwidth, 2), "GB/s", note="torch copy_ of one update, best of 5")
    peaks = {}
    for k in args.ks:
        out = subprocess.run(
            [sys.executable, "-m", "bench.aggregation", "--child", str(k)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        sum_s, step_s, baseline, peak = map(float, out[-4:])
        rate = k * update_gb / sum_s
        peaks[k] = peak
        emit(
            BENCH,
            f"fedavg_k{k}_seconds",
            round(sum_s + step_s, 3),
            "s",
            k=k,
            weighted_sum_s=round(sum_s, 3),
            mean_and_server_step_s=round(step_s, 3),
        )
        emit(
            BENCH,
            f"fedavg_k{k}_throughput",
            round(rate, 2),
            "GB/s",
            k=k,
            of_memcpy=round(rate / bandwidth, 3),
        )
        emit(
            BENCH,
            f"fedavg_k{k}_peak_rss",
            round(peak, 3),
            "GiB",
            k=k,
            above_inputs_gib=round(peak - baseline, 3),
            inputs_gib=round(baseline, 3),
        )
    smallest, largest = min(peaks), max(peaks)
    growth = peaks[largest] / peaks[smallest]
    emit(
        BENCH,
        "peak_rss_growth",
        round(growth, 3),
        "ratio",
        target=f"flat: K={largest} within {RSS_FLAT_LIMIT:.2f}x of K={smallest}",
        met=growth <= RSS_FLAT_LIMIT,
    )


if __name__ == "__main__":
    main()
