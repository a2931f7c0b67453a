"""Local fit and evaluate in plain torch: seeded, bf16 autocast on CUDA, CPU otherwise."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from fedsilo.modeling import EncodedSet

Progress = Callable[[int, int, float], None]


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class Schedule:
    """A linear warm-up over `warmup` steps, then a linear decay to 0 at step `total` (transformers'
    linear schedule), counted over a whole job: a fit that takes the job's steps from `start` on
    continues the course where the previous round left it, rather than starting it again."""

    start: int
    total: int
    warmup: int

    def factor(self, step: int) -> float:
        """The learning rate's multiplier at this fit's `step` (0 is its first)."""
        at = self.start + step
        if at < self.warmup:
            return (at + 1) / (self.warmup + 1)
        return max(0.0, (self.total - at) / max(1, self.total - self.warmup))


@dataclass(frozen=True)
class FitSettings:
    """One local training run: `steps` optimizer steps when set, else `epochs` passes over the data.

    `proximal_mu` > 0 adds FedProx's mu/2 * ||w - w_start||^2 to the loss, w_start being the
    weights the model held when `fit` began (the global model, in a federated round), or the named
    parameters of `anchor` when given (Ditto: the global model, while the personal model trains).
    `correction` is added to each named parameter's gradient at every step (SCAFFOLD's c - c_i).
    """

    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str
    seed: int
    steps: int | None = None
    proximal_mu: float = 0.0
    momentum: float = 0.9  # SGD's; SCAFFOLD's local steps are plain SGD (0)
    anchor: dict[str, torch.Tensor] | None = field(default=None, compare=False, hash=False)
    correction: dict[str, torch.Tensor] | None = field(default=None, compare=False, hash=False)
    schedule: Schedule | None = None  # the learning rate's course over the job; None: constant

    def total_steps(self, num_examples: int) -> int:
        return self.steps or -(-num_examples // self.batch_size) * self.epochs

    def along(
        self, num_examples: int, warmup_fraction: float, fits: int = 1, index: int = 1
    ) -> "FitSettings":
        """These settings as fit `index` (from 1) of `fits` equal fits that share one linear schedule."""
        per_fit = self.total_steps(num_examples)
        total = per_fit * fits
        return replace(self, schedule=Schedule((index - 1) * per_fit, total, int(warmup_fraction * total)))


def logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    output = model(**inputs)
    return output if isinstance(output, torch.Tensor) else output.logits


def make_optimizer(model: torch.nn.Module, settings: FitSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=settings.learning_rate, momentum=settings.momentum)
    return torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)


def scheduled(optimizer: torch.optim.Optimizer, schedule: Schedule | None):
    """A torch scheduler that follows `schedule` step by step, or None for a constant rate."""
    if schedule is None:
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.factor)


def _batches(data: EncodedSet, settings: FitSettings, shuffle: torch.Generator) -> Iterator:
    """Shuffled batches, pass after pass, for as many steps as the settings ask."""
    step, total = 0, settings.total_steps(len(data))
    while step < total:
        for batch in data.batches(settings.batch_size, shuffle):
            yield batch
            step += 1
            if step == total:
                return


class _Proximal:
    """FedProx's mu/2 * ||w - w_start||^2 over the trainable parameters, w_start frozen at creation
    (or given by name in `anchor`)."""

    def __init__(self, model: torch.nn.Module, mu: float, anchor: dict[str, torch.Tensor] | None = None):
        self.mu = mu
        anchor = anchor or {}
        self.anchor = [
            (p, anchor[name].to(p.device, p.dtype) if name in anchor else p.detach().clone())
            for name, p in model.named_parameters()
            if p.requires_grad
        ]

    def __call__(self) -> torch.Tensor:
        return self.mu / 2 * sum(((p - start) ** 2).sum() for p, start in self.anchor)


def fit(
    model: torch.nn.Module, data: EncodedSet, settings: FitSettings, progress: Progress | None = None
) -> float:
    """Train in place; return the mean training loss over the last epoch's worth of steps."""
    device = pick_device()
    model.to(device).train()
    torch.manual_seed(settings.seed)
    shuffle = torch.Generator().manual_seed(settings.seed)
    optimizer = make_optimizer(model, settings)
    scheduler = scheduled(optimizer, settings.schedule)
    proximal = _Proximal(model, settings.proximal_mu, settings.anchor) if settings.proximal_mu > 0 else None
    total, window = settings.total_steps(len(data)), -(-len(data) // settings.batch_size)
    losses: list[float] = []
    for step, (inputs, labels) in enumerate(_batches(data, settings, shuffle), start=1):
        inputs = {k: v.to(device) for k, v in inputs.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = torch.nn.functional.cross_entropy(logits(model, inputs).float(), labels.to(device))
        losses.append(loss.item())  # the data term: what the model's fit to this silo's data is
        if proximal is not None:
            loss = loss + proximal()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _correct(model, settings.correction)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if progress:
            progress(step, total, losses[-1])
    return float(np.mean(losses[-window:]))


@torch.no_grad()
def _correct(model: torch.nn.Module, correction: dict[str, torch.Tensor] | None) -> None:
    """Add each named parameter's correction to its gradient."""
    if not correction:
        return
    for name, parameter in model.named_parameters():
        if parameter.grad is not None and name in correction:
            parameter.grad.add_(correction[name].to(parameter.grad.device, parameter.grad.dtype))


@torch.no_grad()
def predict(model: torch.nn.Module, data: EncodedSet, batch_size: int) -> np.ndarray:
    """Class probabilities for every example, in order."""
    device = pick_device()
    model.to(device).eval()
    chunks = []
    for inputs, _ in data.batches(batch_size):
        inputs = {k: v.to(device) for k, v in inputs.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            chunks.append(torch.softmax(logits(model, inputs).double(), dim=-1).cpu())
    return torch.cat(chunks).numpy()
