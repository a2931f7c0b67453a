"""Classification metrics through scikit-learn, per silo and over the union of silos.

A silo reports its confusion matrix, not its per-example labels: the union's accuracy and
macro-F1 follow exactly from the summed matrices, and no row-level information leaves the silo.
"""

import numpy as np
from sklearn.metrics import confusion_matrix, log_loss


def scores_from_confusion(confusion: np.ndarray) -> dict[str, float]:
    """accuracy and macro-F1 over all classes (a class never seen nor predicted scores 0, as sklearn)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positive = np.diag(confusion)
    denominator = confusion.sum(0) + confusion.sum(1)  # 2tp + fp + fn
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
    return {"accuracy": float(true_positive.sum() / confusion.sum()), "f1_macro": float(f1.mean())}


def classification_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict:
    """accuracy, macro-F1 over all model classes, mean cross-entropy, and the confusion matrix.

    A diverged model (non-finite outputs) still gets scored: its loss is NaN, its NaN scores never win.
    """
    labels = np.arange(probs.shape[1])
    finite = bool(np.isfinite(probs).all())
    predicted = np.nan_to_num(probs, nan=-1.0).argmax(axis=1)
    confusion = confusion_matrix(y_true, predicted, labels=labels)
    loss = float(log_loss(y_true, probs, labels=labels)) if finite else float("nan")
    return scores_from_confusion(confusion) | {"loss": loss, "confusion": confusion.tolist()}


def union_metrics(confusions: list[list[list[int]]], losses: list[float]) -> dict[str, float]:
    """Metrics over the union of several silos' test sets, from their confusion matrices.

    The union's mean loss is the per-silo mean losses weighted by test-set size.
    """
    matrices = [np.asarray(c) for c in confusions]
    sizes = np.array([m.sum() for m in matrices])
    loss = float(np.dot(sizes, losses) / sizes.sum())
    return scores_from_confusion(sum(matrices)) | {"loss": loss}


def global_metrics(evaluations) -> dict[str, float]:
    """accuracy, f1_macro and loss of one model over the union of the silos' test sets
    (`evaluations`: fedsilo.messages.Evaluation records)."""
    return union_metrics([e.confusion for e in evaluations], [e.loss for e in evaluations])
