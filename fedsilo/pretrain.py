"""Pretrain the CNN on scikit-learn's digits (ships offline), as the founding document prescribes.

Digits are 8x8; they are upscaled to the target image size so the checkpoint's convolution and
hidden layers fit the federated model; only the classifier head is new there.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from fedsilo.metrics import classification_metrics
from fedsilo.modeling import EncodedSet
from fedsilo.training import FitSettings, fit, predict
from models import build_cnn


@dataclass(frozen=True)
class PretrainResult:
    path: Path
    accuracy: float
    image_size: int


def digits(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits scaled to [-1, 1] and resized to image_size x image_size, one channel."""
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    resized = torch.nn.functional.interpolate(images, size=(image_size, image_size), mode="bilinear")
    return resized, torch.tensor(data.target, dtype=torch.long)


def pretrain_cnn(output: Path, image_size: int = 28, epochs: int = 5, seed: int = 0) -> PretrainResult:
    """Train LeNet on digits, write its weights to `output` (safetensors), report test accuracy."""
    images, labels = digits(image_size)
    train, test = train_test_split(np.arange(len(labels)), test_size=0.2, random_state=seed, stratify=labels)
    model = build_cnn(1, image_size, 10, seed)
    settings = FitSettings(epochs=epochs, batch_size=32, learning_rate=1e-3, optimizer="adamw", seed=seed)
    fit(model, EncodedSet({"pixel_values": images[train]}, labels[train]), settings)
    probs = predict(model, EncodedSet({"pixel_values": images[test]}, labels[test]), 256)
    accuracy = classification_metrics(labels[test].numpy(), probs)["accuracy"]
    output.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, output)
    return PretrainResult(output, accuracy, image_size)
