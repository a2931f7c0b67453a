"""Local fit and evaluate in plain torch: seeded, bf16 autocast on CUDA, CPU otherwise."""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fedsilo.modeling import EncodedSet

Progress = Callable[[int, int, float], None]


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class FitSettings:
    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str
    seed: int


def _logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    output = model(**inputs)
    return output if isinstance(output, torch.Tensor) else output.logits


def _optimizer(model: torch.nn.Module, settings: FitSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=settings.learning_rate, momentum=0.9)
    return torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)


def fit(
    model: torch.nn.Module, data: EncodedSet, settings: FitSettings, progress: Progress | None = None
) -> float:
    """Train in place for `settings.epochs`; return the mean training loss of the last epoch."""
    device = pick_device()
    model.to(device).train()
    torch.manual_seed(settings.seed)
    shuffle = torch.Generator().manual_seed(settings.seed)
    optimizer = _optimizer(model, settings)
    steps_per_epoch = -(-len(data) // settings.batch_size)
    total, step, epoch_losses = steps_per_epoch * settings.epochs, 0, []
    for _ in range(settings.epochs):
        epoch_losses = []
        for inputs, labels in data.batches(settings.batch_size, shuffle):
            inputs = {k: v.to(device) for k, v in inputs.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = torch.nn.functional.cross_entropy(_logits(model, inputs).float(), labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_losses.append(loss.item())
            step += 1
            if progress:
                progress(step, total, epoch_losses[-1])
    return float(np.mean(epoch_losses))


@torch.no_grad()
def predict(model: torch.nn.Module, data: EncodedSet, batch_size: int) -> np.ndarray:
    """Class probabilities for every example, in order."""
    device = pick_device()
    model.to(device).eval()
    chunks = []
    for inputs, _ in data.batches(batch_size):
        inputs = {k: v.to(device) for k, v in inputs.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            chunks.append(torch.softmax(_logits(model, inputs).double(), dim=-1).cpu())
    return torch.cat(chunks).numpy()
