"""Record-level DP-SGD at a silo through Opacus (Abadi et al. 2016).

Each step samples every training example independently with probability q = batch_size / n
(Poisson sampling, what the RDP accountant assumes), clips each example's gradient to
`max_grad_norm`, adds Gaussian noise of std noise_multiplier * max_grad_norm and takes the
optimizer's step. Opacus computes the per-example gradients (GradSampleModule) and does the
clipping and noising (DPOptimizer); the accountant is `fedsilo.privacy.accounting`.

Layers: Opacus supports Linear, Conv2d, LayerNorm and Embedding, so the CNN trains whole. In a
BERT-family encoder the embedding tables are frozen (parameters whose name contains
"embeddings"): their per-example gradients would cost batch x vocabulary x hidden memory, and
fine-tuning the encoder layers and the head is where the task is learned. Frozen weights stay at
the global model's values, so the exchanged state keeps its layout.

Randomness (sampling and noise) comes from the OS, not from `federation.seed`: noise that anyone
holding the scenario could regenerate would protect nothing. DP runs are therefore not bit-for-bit
repeatable.
"""

import secrets
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from fedsilo.errors import PrivacyBudgetExhausted
from fedsilo.modeling import EncodedSet
from fedsilo.privacy.accounting import epsilon, noise_for
from fedsilo.training import FitSettings, Progress, logits, make_optimizer, pick_device

FROZEN_MARK = "embeddings"


@dataclass(frozen=True)
class DPPlan:
    """One silo's DP-SGD for a whole job: its noise, sampling rate and budget."""

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    delta: float
    max_grad_norm: float
    target_epsilon: float | None  # None: no budget, epsilon is only reported

    def epsilon_after(self, rounds: int) -> float:
        """epsilon spent after `rounds` rounds of training (the silo's own accountant)."""
        return epsilon(self.noise_multiplier, self.sample_rate, self.steps_per_round * rounds, self.delta)

    def check_budget(self, round_index: int) -> float:
        """epsilon after training round `round_index`; raises when that passes the budget."""
        spent = self.epsilon_after(round_index)
        if self.target_epsilon is not None and spent > self.target_epsilon:
            before = self.epsilon_after(round_index - 1)
            raise PrivacyBudgetExhausted(
                f"round {round_index} would spend epsilon {spent:.3f} > privacy.dp.target_epsilon "
                f"{self.target_epsilon} (spent so far: {before:.3f}); this silo stops training"
            )
        return spent


def plan(dp, num_examples: int, settings: FitSettings, rounds: int) -> DPPlan:
    """The silo's DP-SGD plan from the scenario's `privacy.dp`: a given noise multiplier, or the one
    that spends exactly `target_epsilon` over the scenario's `rounds`."""
    sample_rate = min(1.0, settings.batch_size / num_examples)
    steps = settings.total_steps(num_examples)
    sigma = dp.noise_multiplier or noise_for(dp.target_epsilon, dp.delta, sample_rate, steps * rounds)
    return DPPlan(sigma, sample_rate, steps, dp.delta, dp.max_grad_norm, dp.target_epsilon)


def freeze_unsupported(model: torch.nn.Module) -> list[str]:
    """Freeze the embedding tables (see the module docstring); returns the frozen names."""
    from opacus.validators import ModuleValidator

    frozen = []
    for name, parameter in model.named_parameters():
        if FROZEN_MARK in name and parameter.requires_grad:
            parameter.requires_grad_(False)
            frozen.append(name)
    problems = ModuleValidator.validate(model, strict=False)
    if problems:
        raise ValueError(f"privacy.dp: Opacus cannot train this model: {'; '.join(map(str, problems[:3]))}")
    return frozen


def dp_fit(
    model: torch.nn.Module,
    data: EncodedSet,
    settings: FitSettings,
    dp: DPPlan,
    progress: Progress | None = None,
) -> float:
    """Train in place with DP-SGD for `dp.steps_per_round` steps; the mean loss of the steps."""
    from opacus import GradSampleModule  # about 3 s to import: only DP jobs pay it
    from opacus.optimizers import DPOptimizer

    device = pick_device()
    model.to(device).train()
    frozen = freeze_unsupported(model)
    sampler = torch.Generator().manual_seed(secrets.randbits(63))
    noise = torch.Generator(device=device).manual_seed(secrets.randbits(63))
    wrapped = GradSampleModule(model)
    optimizer = DPOptimizer(
        make_optimizer(model, settings),
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.max_grad_norm,
        expected_batch_size=max(1, round(dp.sample_rate * len(data))),
        generator=noise,
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    losses: list[float] = []
    warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
    try:
        for step in range(1, dp.steps_per_round + 1):
            rows = (torch.rand(len(data), generator=sampler) < dp.sample_rate).nonzero().flatten()
            optimizer.zero_grad(set_to_none=True)
            if len(rows):
                inputs, labels = data.take(rows)
                inputs = {k: v.to(device) for k, v in inputs.items()}
                loss = torch.nn.functional.cross_entropy(logits(wrapped, inputs).float(), labels.to(device))
                loss.backward()
                losses.append(loss.item())
            else:  # an empty Poisson batch still takes its noisy step, as the accountant assumes
                for parameter in trainable:
                    parameter.grad_sample = parameter.new_zeros((0, *parameter.shape))
            optimizer.step()
            if progress:
                progress(step, dp.steps_per_round, losses[-1] if losses else float("nan"))
    finally:
        wrapped._close()  # removes Opacus's hooks: the model serves plain evaluation again
        for name, parameter in model.named_parameters():
            if name in frozen:
                parameter.requires_grad_(True)
    return float(np.mean(losses)) if losses else float("nan")
