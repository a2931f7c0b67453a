"""Why short MiniLM federations sit on the majority class, then swing: plain FedAvg of the
packaged MiniLM over IID silos of Twitter financial news, outside the engine so that one thing
changes at a time. Each silo takes S steps a round, R rounds, the benchmark's budget (E = 3
passes over R = 12 rounds); the global model is scored on the union of the silos' test splits
after every round, with the share of each predicted class.

Variants (first argument, joined by '+'): `fresh` (a new AdamW every round, as silos do),
`kept` (each silo keeps its AdamW moments across rounds), `linear` (warm-up over 10% of the
job's steps, then linear decay to 0, one course across rounds), `server<k>` (server learning
rate k: w + k * mean change).

    python -m bench.text_stall fresh 1e-4
    python -m bench.text_stall kept 1e-4
    python -m bench.text_stall fresh+linear 3e-4
    python -m bench.text_stall fresh+linear+server3 1e-4
"""

import argparse
import copy

import numpy as np
import torch

from bench.common import emit, results_dir, start
from bench.quality import DATASETS, build_scenario
from fedsilo.silo import participant
from fedsilo.training import Schedule, logits, predict

BENCH = "text-stall"


def batches(train, batch: int, generator: torch.Generator):
    while True:
        yield from train.batches(batch, generator)


def score(model, silos, state) -> tuple[float, list[int]]:
    """Union accuracy of `state` and how often each class is predicted."""
    model.load_state_dict(state)
    predicted = [predict(model, s.test, 64).argmax(1) for s in silos]
    truth = np.concatenate([s.test.labels.numpy() for s in silos])
    predicted = np.concatenate(predicted)
    return float((predicted == truth).mean()), np.bincount(predicted, minlength=3).tolist()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variant")
    parser.add_argument("learning_rate", type=float)
    parser.add_argument("--partition", default="iid")
    args = parser.parse_args()
    if not (results_dir() / f"{BENCH}.jsonl").exists():  # variants add to one file
        start(BENCH)
    variant = set(args.variant.split("+"))
    server = next((float(v[6:]) for v in variant if v.startswith("server")), 1.0)
    dataset = DATASETS["twitter-finance"]
    silos = [participant(build_scenario(dataset, args.partition, 3, 0), f"silo-{k:02d}") for k in range(3)]
    sizes = np.array([len(s.train) for s in silos], dtype=np.float64)
    batch, rounds = 16, dataset.rounds
    steps = max(1, round(dataset.epochs * sizes.sum() / (rounds * len(silos) * batch)))
    schedule = Schedule(0, rounds * steps, int(0.1 * rounds * steps)) if "linear" in variant else None
    global_state = copy.deepcopy(silos[0].model.state_dict())
    models = [copy.deepcopy(silos[0].model) for _ in silos]
    streams = [batches(s.train, batch, torch.Generator().manual_seed(k)) for k, s in enumerate(silos)]
    optimizers = [None] * len(silos)
    curve = [score(models[0], silos, global_state)]
    for r in range(rounds):
        states = []
        for k, model in enumerate(models):
            model.load_state_dict(global_state)
            model.train()
            if optimizers[k] is None or "kept" not in variant:
                optimizers[k] = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
            for j in range(steps):
                factor = schedule.factor(r * steps + j) if schedule else 1.0
                for group in optimizers[k].param_groups:
                    group["lr"] = args.learning_rate * factor
                inputs, labels = next(streams[k])
                loss = torch.nn.functional.cross_entropy(logits(model, inputs), labels)
                optimizers[k].zero_grad()
                loss.backward()
                optimizers[k].step()
            states.append(copy.deepcopy(model.state_dict()))
        weights = sizes / sizes.sum()
        for name, tensor in global_state.items():
            mean = sum(w * s[name].double() for w, s in zip(weights, states))
            global_state[name] = (tensor.double() + server * (mean - tensor.double())).to(tensor.dtype)
        curve.append(score(models[0], silos, global_state))
        print(f"round {r + 1}: accuracy {curve[-1][0]:.3f}, predicted per class {curve[-1][1]}", flush=True)
    majority = sum(1 for accuracy, counts in curve[1:] if max(counts) == sum(counts))
    emit(
        BENCH,
        f"{args.variant}_{args.learning_rate:g}_{args.partition}",
        round(curve[-1][0], 4),
        "accuracy",
        curve=[round(a, 4) for a, _ in curve],
        best=round(max(a for a, _ in curve), 4),
        rounds_on_one_class=majority,
        local_steps=steps,
    )


if __name__ == "__main__":
    main()
