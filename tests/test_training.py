import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

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
    # silo 1: true [0, 1] predicted [0, 0]; silo 2: true [1] predicted [1]
    union = union_metrics([[[1, 0], [1, 0]], [[0, 0], [0, 1]]], [1.0, 4.0])
    assert union["accuracy"] == 2 / 3 and union["loss"] == 2.0
    assert union["f1_macro"] == pytest.approx((2 / 3 + 2 / 3) / 2)  # class 0: 2/(2+1), class 1: 2/(2+1)


def test_scores_from_summed_confusions_match_sklearn_on_the_pooled_rows():
    rng = np.random.default_rng(0)
    num_classes, silos = 5, []
    for size in (7, 30, 1):
        y_true = rng.integers(0, 3, size)  # classes 3 and 4 are never seen: they count as F1 0
        probs = rng.dirichlet(np.ones(num_classes), size)
        silos.append((y_true, probs))
    per_silo = [classification_metrics(t, p) for t, p in silos]
    union = union_metrics([m["confusion"] for m in per_silo], [m["loss"] for m in per_silo])
    pooled_true = np.concatenate([t for t, _ in silos])
    pooled_pred = np.concatenate([p.argmax(1) for _, p in silos])
    expected = f1_score(
        pooled_true, pooled_pred, labels=np.arange(num_classes), average="macro", zero_division=0
    )
    assert union["f1_macro"] == pytest.approx(expected, abs=1e-12)
    assert union["accuracy"] == pytest.approx(accuracy_score(pooled_true, pooled_pred))


def distance_from_start(mu: float) -> float:
    data = toy_images()
    model = build_cnn(1, 16, 2, seed=0)
    start = [p.detach().clone() for p in model.parameters()]
    fit(model, data, FitSettings(2, 16, 1e-2, "sgd", seed=1, proximal_mu=mu))
    return float(sum(((p.detach() - s) ** 2).sum() for p, s in zip(model.parameters(), start)) ** 0.5)


def test_the_proximal_term_keeps_the_local_model_near_where_it_started():
    distances = [distance_from_start(mu) for mu in (0.0, 1.0, 10.0, 100.0)]
    assert distances == sorted(distances, reverse=True)
    assert distances[-1] < 0.2 * distances[0]


def test_local_steps_can_be_part_of_an_epoch_or_span_several():
    data = toy_images()  # 64 examples, batch 16: 4 steps per epoch
    for steps in (3, 10):
        seen = []
        fit(
            build_cnn(1, 16, 2),
            data,
            FitSettings(1, 16, 1e-3, "adamw", 1, steps=steps),
            lambda s, t, _, out=seen: out.append(t),
        )
        assert len(seen) == steps and seen[-1] == steps
    epochs = FitSettings(2, 16, 1e-3, "adamw", 1)
    assert epochs.total_steps(64) == 8 and FitSettings(2, 16, 1e-3, "adamw", 1, steps=5).total_steps(64) == 5
