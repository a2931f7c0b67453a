import numpy as np
import torch

from fedsilo.metrics import classification_metrics, union_metrics
from fedsilo.modeling import EncodedSet
from fedsilo.training import FitSettings, fit, predict
from models import build_cnn


def toy_images(n=64):
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (n,), generator=generator)
    images = torch.randn(n, 1, 16, 16, generator=generator) * 0.1
    images[labels == 1, :, :8] += 1.0  # class 1 is bright on top
    return EncodedSet({"pixel_values": images}, labels)


def test_fit_learns_and_is_reproducible():
    data = toy_images()
    settings = FitSettings(epochs=3, batch_size=16, learning_rate=1e-3, optimizer="adamw", seed=1)
    first, second = build_cnn(1, 16, 2), build_cnn(1, 16, 2)
    before = classification_metrics(data.labels.numpy(), predict(first, data, 32))
    steps = []
    loss_a = fit(first, data, settings, progress=lambda s, t, loss: steps.append((s, t)))
    loss_b = fit(second, data, settings)
    assert loss_a == loss_b
    assert steps[-1] == (12, 12)
    after = classification_metrics(data.labels.numpy(), predict(first, data, 32))
    assert after["accuracy"] == 1.0 and after["loss"] < before["loss"]


def test_union_metrics_weight_losses_by_test_size():
    union = union_metrics([np.array([0, 1]), np.array([1])], [np.array([0, 0]), np.array([1])], [1.0, 4.0], 2)
    assert union["accuracy"] == 2 / 3 and union["loss"] == 2.0
    assert 0 < union["f1_macro"] < 1
