"""The same federated job as `fedsilo run`, as a bare PyTorch script: the overhead baseline.

No Prefect, no MLflow, no files: models stay in memory. It reads the scenario and each silo's
rows through fedsilo (so both sides see identical tokens) and does every training and
evaluation step `fedsilo run` does, in the same order with the same seeds:
round 0 evaluates the pretrained model; each round every silo trains one local epoch and scores
its local model, the updates are averaged (n_k weighted) and the global model is scored on every
silo; after the last round every silo's final local model is scored on every silo.

    python -m bench.bare_federation scenarios/medical.yaml --rounds 3
"""

import argparse
import copy
import json
import time

import numpy as np
import torch

from fedsilo.data import label_names, load_silo_data
from fedsilo.modeling import build_model, encode, tokenizer_for
from fedsilo.scenario import load_scenario


def batches(data, batch_size: int, generator: torch.Generator | None = None):
    order = torch.randperm(len(data), generator=generator) if generator else torch.arange(len(data))
    for first in range(0, len(data), batch_size):
        rows = order[first : first + batch_size]
        ids = [data.features["input_ids"][i] for i in rows.tolist()]
        yield dict(data.pad({"input_ids": ids}, return_tensors="pt")), data.labels[rows]


def train_epoch(model, data, batch_size: int, learning_rate: float, seed: int) -> None:
    model.train()
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    for inputs, labels in batches(data, batch_size, torch.Generator().manual_seed(seed)):
        loss = torch.nn.functional.cross_entropy(model(**inputs).logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@torch.no_grad()
def confusion(model, data, classes: int) -> np.ndarray:
    model.eval()
    matrix = np.zeros((classes, classes), dtype=np.int64)
    for inputs, labels in batches(data, 64):
        predicted = model(**inputs).logits.argmax(-1)
        np.add.at(matrix, (labels.numpy(), predicted.numpy()), 1)
    return matrix


def average(states: list[dict], sizes: list[int], current: dict) -> dict:
    """n_k-weighted mean in float32, then FedAvg's server step with learning rate 1."""
    total = sum(sizes)
    out = {}
    for name, base in current.items():
        if not base.is_floating_point():
            out[name] = base
            continue
        mean = sum(state[name].float() * n for state, n in zip(states, sizes)) / total
        out[name] = base.float() + (mean - base.float())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenario")
    parser.add_argument("--rounds", type=int)
    args = parser.parse_args()
    began = time.perf_counter()
    scenario = load_scenario(args.scenario, rounds=args.rounds)
    federation, names = scenario.federation, scenario.silo_names()
    labels = label_names(scenario)
    tokenizer = tokenizer_for(scenario.model)
    silos = []
    for name in names:
        data = load_silo_data(scenario, name)
        silos.append(
            tuple(encode(part, labels, scenario.model, name, tokenizer) for part in (data.train, data.test))
        )
    model = build_model(scenario.model, len(labels), (), federation.seed)
    current = copy.deepcopy(model.state_dict())
    accuracy = []

    def union_accuracy(state) -> float:
        model.load_state_dict(state)
        total = sum(confusion(model, test, len(labels)) for _, test in silos)
        return float(np.trace(total) / total.sum())

    accuracy.append(union_accuracy(current))
    for round_index in range(1, federation.rounds + 1):
        updates = []
        for silo_index, (train, test) in enumerate(silos):
            model.load_state_dict(current)
            seed = int(
                np.random.SeedSequence([federation.seed, round_index, silo_index]).generate_state(1)[0]
            )
            train_epoch(model, train, federation.batch_size, federation.learning_rate, seed)
            confusion(model, test, len(labels))  # the silo scores its local model
            updates.append(copy.deepcopy(model.state_dict()))
        current = average(updates, [len(train) for train, _ in silos], current)
        accuracy.append(union_accuracy(current))
    for update in updates:  # the silo x silo matrix: every final local model on every silo
        model.load_state_dict(update)
        for _, test in silos:
            confusion(model, test, len(labels))
    print(json.dumps({"global_accuracy": accuracy, "seconds": time.perf_counter() - began}))


if __name__ == "__main__":
    main()
