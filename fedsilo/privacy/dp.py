"""Record-level DP-SGD at a silo through Opacus (Abadi et al. 2016).

Each step samples every training example independently with probability q = batch_size / n
(Poisson sampling, what the RDP accountant assumes), clips each example's gradient to
`max_grad_norm`, adds Gaussian noise of std noise_multiplier * max_grad_norm and takes the
optimizer's step. Opacus computes the per-example gradients (GradSampleModule) and does the
clipping and noising (DPOptimizer); the accountant is `fedsilo.privacy.accounting`.

n is the silo's *noised* training count (`draw_count`, released once and counted in epsilon), not
its exact one: q, the steps per round, the loss's normalisation and the FedAvg weight all follow
from it, so nothing the silo sends is a function of its exact count. The sampling itself does not
need n: each row is drawn with probability q whatever their number.

Layers: Opacus supports Linear, Conv2d, LayerNorm and Embedding, so the CNN trains whole. In a
BERT-family encoder the embedding tables are frozen (parameters whose name contains
"embeddings"): their per-example gradients would cost batch x vocabulary x hidden memory, and
fine-tuning the encoder layers and the head is where the task is learned. Frozen weights stay at
the global model's values, so the exchanged state keeps its layout.

Randomness (sampling and noise) comes from the OS, not from `federation.seed`: noise that anyone
holding the scenario could regenerate would protect nothing. DP runs are therefore not bit-for-bit
repeatable. By default torch's generators are seeded from the OS (fast; a Mersenne Twister, whose
state its outputs would give away); with `privacy.dp.secure_mode` every draw comes from ChaCha20
keyed from the OS (`SecureRandom`), and the noise is built as Opacus's secure mode builds it.
"""

import math
import secrets
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from fedsilo.errors import SiloDeclined, StepFailed
from fedsilo.modeling import EncodedSet
from fedsilo.privacy.accounting import epsilon, noise_for
from fedsilo.training import FitSettings, Progress, logits, make_optimizer, pick_device, scheduled

FROZEN_MARK = "embeddings"


@dataclass(frozen=True)
class DPPlan:
    """One silo's DP-SGD for a whole job: its noise, sampling rate and budget, all derived from its
    noised training count `num_examples` (public once released)."""

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    delta: float
    max_grad_norm: float
    target_epsilon: float | None  # None: no budget, epsilon is only reported
    num_examples: int = 0  # the noised count the plan is made for
    count_noise: float | None = None  # std of the count's noise, counted in epsilon
    secure_mode: bool = False

    @property
    def expected_batch_size(self) -> int:
        """What DPOptimizer divides the noisy sum by: q x the noised count, never the exact one."""
        return max(1, round(self.sample_rate * self.num_examples))

    def epsilon_after(self, rounds: int) -> float:
        """epsilon spent after `rounds` rounds of training (the silo's own accountant), the count's
        release included."""
        steps = self.steps_per_round * rounds
        return epsilon(self.noise_multiplier, self.sample_rate, steps, self.delta, self.count_noise)

    def check_delta(self) -> None:
        """SiloDeclined unless delta < 1/n: a delta that large allows releasing a record outright.
        (The budget itself is the silo's ledger: fedsilo.privacy.budget_ledger.)"""
        if self.delta * self.num_examples >= 1:
            raise SiloDeclined(
                f"privacy.dp.delta {self.delta:g} is not below 1/n = 1/{self.num_examples} (n: this silo's "
                "training count, as reported); a delta that large allows releasing a record outright, so "
                "this silo does not train; lower privacy.dp.delta"
            )


def plan(dp, num_examples: int, settings: FitSettings, rounds: int) -> DPPlan:
    """The silo's DP-SGD plan from the scenario's `privacy.dp` for its (noised) training count: a given
    noise multiplier, or the one that spends exactly `target_epsilon` over the scenario's `rounds`,
    the count's release included."""
    sample_rate = min(1.0, settings.batch_size / num_examples)
    steps = settings.total_steps(num_examples)
    sigma = dp.noise_multiplier or noise_for(
        dp.target_epsilon, dp.delta, sample_rate, steps * rounds, dp.count_noise
    )
    return DPPlan(
        sigma,
        sample_rate,
        steps,
        dp.delta,
        dp.max_grad_norm,
        dp.target_epsilon,
        num_examples,
        dp.count_noise,
        dp.secure_mode,
    )


def draw_count(true_count: int, std: float) -> int:
    """A training count under Gaussian noise of `std` (sensitivity 1: one record changes it by one),
    rounded and at least 1, drawn from the OS's CSPRNG. Rounding and the floor are post-processing."""
    return max(1, round(true_count + secrets.SystemRandom().gauss(0.0, std)))


class SecureRandom:
    """Uniforms and Gaussians from ChaCha20 under a fresh key from the OS (`privacy.dp.secure_mode`).

    Opacus's own secure mode needs `torchcsprng`, which does not build against current torch; this
    is the same thing with the `cryptography` package. Gaussians are built as Opacus's secure mode
    builds them (the sum of four Box-Muller draws, halved), which hides the low-order bits that the
    floating-point attacks on Gaussian noise read (Holohan and Braghin 2021).
    """

    def __init__(self):
        self._key = secrets.token_bytes(32)
        self._calls = 0

    def uniform(self, count: int) -> np.ndarray:
        """`count` floats uniform in (0, 1], 53 random bits each."""
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

        self._calls += 1  # a fresh nonce for every call: no keystream is ever used twice
        nonce = bytes(4) + self._calls.to_bytes(12, "little")
        stream = Cipher(algorithms.ChaCha20(self._key, nonce), mode=None).encryptor().update(bytes(8 * count))
        words = np.frombuffer(stream, dtype=np.uint64) >> np.uint64(11)
        return (words.astype(np.float64) + 1.0) / 2.0**53

    def gaussian(self, shape: torch.Size | tuple[int, ...], std: float) -> torch.Tensor:
        """Gaussian noise of standard deviation `std` (float64), in `shape`."""
        count = math.prod(shape)
        radius, turn = self.uniform(4 * count).reshape(2, 2 * count)  # Box-Muller: two normals a pair
        radius, angle = np.sqrt(-2.0 * np.log(radius)), 2.0 * np.pi * turn
        normal = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)]).reshape(4, count)
        return torch.from_numpy(normal.sum(axis=0) * (std / 2.0)).reshape(shape)


def _secure_optimizer(source: SecureRandom, **kwargs):
    """A DPOptimizer whose noise comes from `source`: Opacus clips and sums as usual (with its
    noise multiplier set to 0 for that part), then the noise is added from the CSPRNG."""
    from opacus.optimizers import DPOptimizer

    class SecureNoiseDPOptimizer(DPOptimizer):
        def add_noise(self):
            sigma, self.noise_multiplier = self.noise_multiplier, 0.0
            try:
                super().add_noise()  # p.grad = the clipped sum, noise-free
            finally:
                self.noise_multiplier = sigma
            for parameter in self.params:
                noise = source.gaussian(parameter.grad.shape, sigma * self.max_grad_norm)
                parameter.grad += noise.to(parameter.grad)

    return SecureNoiseDPOptimizer(**kwargs)


def freeze_unsupported(model: torch.nn.Module) -> list[str]:
    """Freeze the embedding tables (see the module docstring); returns the frozen names. A model
    Opacus cannot train is a StepFailed naming why."""
    from opacus.validators import ModuleValidator

    frozen = []
    for name, parameter in model.named_parameters():
        if FROZEN_MARK in name and parameter.requires_grad:
            parameter.requires_grad_(False)
            frozen.append(name)
    problems = ModuleValidator.validate(model, strict=False)
    if problems:
        raise StepFailed(f"privacy.dp: Opacus cannot train this model: {'; '.join(map(str, problems[:3]))}")
    return frozen


def _optimizer(
    model: torch.nn.Module, settings: FitSettings, dp: DPPlan, device, source: SecureRandom | None
):
    """Opacus's DPOptimizer over the scenario's optimizer; noise from `source` under secure mode,
    else from a torch generator seeded from the OS."""
    kwargs = dict(
        optimizer=make_optimizer(model, settings),
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.max_grad_norm,
        expected_batch_size=dp.expected_batch_size,
    )
    if source is not None:
        return _secure_optimizer(source, **kwargs)
    from opacus.optimizers import DPOptimizer

    return DPOptimizer(**kwargs, generator=torch.Generator(device=device).manual_seed(secrets.randbits(63)))


def _sampler(size: int, dp: DPPlan, source: SecureRandom | None):
    """Poisson sampling: each call gives the rows of one step, each drawn with probability q."""
    if source is not None:
        return lambda: torch.from_numpy(np.flatnonzero(source.uniform(size) < dp.sample_rate))
    generator = torch.Generator().manual_seed(secrets.randbits(63))
    return lambda: (torch.rand(size, generator=generator) < dp.sample_rate).nonzero().flatten()


def dp_fit(
    model: torch.nn.Module,
    data: EncodedSet,
    settings: FitSettings,
    dp: DPPlan,
    progress: Progress | None = None,
) -> float:
    """Train in place with DP-SGD for `dp.steps_per_round` steps; the mean loss of the steps, for the
    silo's own use: `progress` is told NaN, since a loss on the rows is not noised."""
    from opacus import GradSampleModule  # about 3 s to import: only DP jobs pay it

    device = pick_device()
    model.to(device).train()
    frozen = freeze_unsupported(model)
    source = SecureRandom() if dp.secure_mode else None
    sample = _sampler(len(data), dp, source)
    wrapped = GradSampleModule(model)
    optimizer = _optimizer(model, settings, dp, device, source)
    scheduler = scheduled(optimizer.original_optimizer, settings.schedule)
    trainable = [p for p in model.parameters() if p.requires_grad]
    losses: list[float] = []
    warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
    try:
        for step in range(1, dp.steps_per_round + 1):
            rows = sample()
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
            if scheduler is not None:
                scheduler.step()
            if progress:
                progress(step, dp.steps_per_round, float("nan"))
    finally:
        wrapped._close()  # removes Opacus's hooks: the model serves plain evaluation again
        for name, parameter in model.named_parameters():
            if name in frozen:
                parameter.requires_grad_(True)
    return float(np.mean(losses)) if losses else float("nan")
