"""Local training throughput: fedsilo's silo fit loop against a minimal PyTorch loop.

Same model, batch, sequence length (128) and optimizer; the two loops alternate so drift in the
machine hits both. The fit loop runs in the precision fedsilo uses on that device (bf16
autocast on CUDA, float32 on CPU); the minimal loop matches it. On CPU the minimal loop is
also timed under bf16 autocast, to show what fedsilo leaves on the table there.

    python -m bench.throughput [--models minilm bert-base] [--repeats 2]
"""

import argparse
import time
from collections.abc import Callable

import torch
from transformers import BertConfig, BertForSequenceClassification

from bench.common import emit, start
from fedsilo.modeling import EncodedSet
from fedsilo.training import FitSettings, fit, pick_device
from models import build_bert, load_tokenizer
from models.bert import PACKAGED_MINILM

BENCH = "throughput"
SEQ_LEN = 128
TARGET = 0.90
# (batch size, measured steps) per model and device kind: enough steps for a steady rate.
WORKLOAD = {
    ("minilm", "cpu"): (8, 16),
    ("bert-base", "cpu"): (8, 4),
    ("minilm", "cuda"): (32, 60),
    ("bert-base", "cuda"): (32, 30),
}


def build(name: str) -> torch.nn.Module:
    if name == "minilm":
        return build_bert(PACKAGED_MINILM, num_labels=2, seed=0)
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(num_labels=2))  # BERT-base shape, 110M


def token_rows(rows: int, vocab: int) -> list[list[int]]:
    ids = torch.randint(1000, vocab, (rows, SEQ_LEN), generator=torch.Generator().manual_seed(1))
    return ids.tolist()


def fedsilo_loop(model, rows: list[list[int]], labels: torch.Tensor, batch: int, tokenizer) -> float:
    """Seconds for one epoch of fedsilo.training.fit over `rows` (one silo's fit, padding included)."""
    data = EncodedSet({"input_ids": rows}, labels, pad=tokenizer.pad)
    settings = FitSettings(epochs=1, batch_size=batch, learning_rate=5e-5, optimizer="adamw", seed=0)
    began = time.perf_counter()
    fit(model, data, settings)
    _sync()
    return time.perf_counter() - began


def minimal_loop(model, rows, labels, batch: int, bf16: bool) -> float:
    """Seconds for the same steps written as the shortest correct PyTorch loop."""
    device = pick_device()
    model.to(device).train()
    ids = torch.tensor(rows, device=device)
    mask, targets = torch.ones_like(ids), labels.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    began = time.perf_counter()
    for first in range(0, len(rows), batch):
        window = slice(first, first + batch)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=ids[window], attention_mask=mask[window]).logits
        loss = torch.nn.functional.cross_entropy(logits.float(), targets[window])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync()
    return time.perf_counter() - began


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(name: str, repeats: int) -> None:
    device = pick_device()
    batch, steps = WORKLOAD[(name, device.type)]
    tokenizer = load_tokenizer(PACKAGED_MINILM)
    model = build(name)
    rows = token_rows(batch * steps, tokenizer.vocab_size)
    labels = torch.randint(0, 2, (len(rows),), generator=torch.Generator().manual_seed(2))
    on_cuda = device.type == "cuda"
    loops: dict[str, Callable[[], float]] = {
        "fedsilo": lambda: fedsilo_loop(model, rows, labels, batch, tokenizer),
        "minimal": lambda: minimal_loop(model, rows, labels, batch, bf16=on_cuda),
    }
    if not on_cuda:
        loops["minimal_bf16"] = lambda: minimal_loop(model, rows, labels, batch, bf16=True)
    warm = rows[: batch * 2]
    fedsilo_loop(model, warm, labels[: len(warm)], batch, tokenizer)  # first-step allocations
    minimal_loop(model, warm, labels[: len(warm)], batch, bf16=True)
    seconds = {loop: 0.0 for loop in loops}
    for _ in range(repeats):
        for loop, run in loops.items():
            seconds[loop] += run()
    rate = {loop: repeats * len(rows) / s for loop, s in seconds.items()}
    precision = "bf16" if on_cuda else "fp32"
    common = {"device": device.type, "batch": batch, "seq_len": SEQ_LEN, "steps": steps * repeats}
    for loop, value in rate.items():
        loop_precision = "bf16" if loop.endswith("bf16") else precision
        emit(
            BENCH,
            f"{name}_{device.type}_{loop}",
            round(value, 2),
            "samples/s",
            precision=loop_precision,
            **common,
        )
    ratio = rate["fedsilo"] / rate["minimal"]
    emit(
        BENCH,
        f"{name}_{device.type}_fit_vs_minimal",
        round(ratio, 3),
        "ratio",
        target=f">= {TARGET:.2f}",
        met=ratio >= TARGET,
        precision=precision,
        **common,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", nargs="+", default=["minilm", "bert-base"], choices=["minilm", "bert-base"]
    )
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    start(BENCH)
    for name in args.models:
        measure(name, args.repeats)


if __name__ == "__main__":
    main()
