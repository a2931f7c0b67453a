"""Classification metrics through scikit-learn, per silo and over the union of silos."""

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, log_loss


def _scores(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict[str, float]:
    labels = np.arange(num_classes)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_macro": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
    }


def classification_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """accuracy, macro-F1 over all model classes, and mean cross-entropy."""
    loss = float(log_loss(y_true, probs, labels=np.arange(probs.shape[1])))
    return _scores(y_true, probs.argmax(axis=1), probs.shape[1]) | {"loss": loss}


def union_metrics(
    y_true: list[np.ndarray], y_pred: list[np.ndarray], losses: list[float], num_classes: int
) -> dict[str, float]:
    """Metrics over the union of several silos' test sets.

    The union's mean loss is the per-silo mean losses weighted by test-set size.
    """
    sizes = np.array([len(t) for t in y_true])
    loss = float(np.dot(sizes, losses) / sizes.sum())
    return _scores(np.concatenate(y_true), np.concatenate(y_pred), num_classes) | {"loss": loss}
