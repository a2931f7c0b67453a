"""Figures people would rather look at than read; matplotlib only, no MLflow here."""

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def accuracy_by_round(
    federation: dict[int, float],
    silos: dict[str, dict[str, dict[int, float]]],
    validation: dict[int, float] | None = None,
) -> plt.Figure:
    """Global accuracy on the union (bold), each silo's global (solid) and local (dashed) accuracy,
    and the global model on the silos' validation rows (dotted; the job's tag fedsilo.kept_round says
    which round it kept)."""
    figure, axes = plt.subplots(figsize=(7, 4.2))
    for index, (silo, series) in enumerate(sorted(silos.items())):
        color = f"C{index % 10}"
        for key, style in (("global_accuracy", "-"), ("local_accuracy", "--")):
            points = sorted(series.get(key, {}).items())
            if points:
                label = f"{silo} ({'global' if key == 'global_accuracy' else 'local'} model)"
                axes.plot(*zip(*points), style, color=color, marker="o", markersize=3, label=label)
    if federation:
        axes.plot(
            *zip(*sorted(federation.items())), "-", color="black", linewidth=2.5, label="global, all silos"
        )
    if validation:
        axes.plot(
            *zip(*sorted(validation.items())),
            ":",
            color="black",
            linewidth=2,
            label="global, validation rows",
        )
    axes.set(xlabel="round", ylabel="accuracy", ylim=(0, 1.02), title="Accuracy by round")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    return figure


def silo_matrix_heatmap(matrix: pd.DataFrame, metric: str) -> plt.Figure:
    """Rows: the model (each silo's local model, the global one, the personalized ones);
    columns: whose test split. Cells never evaluated stay blank."""
    figure, axes = plt.subplots(figsize=(1.4 * matrix.shape[1] + 2.5, 0.7 * matrix.shape[0] + 1.6))
    image = axes.imshow(matrix.to_numpy(dtype=float), vmin=0, vmax=1, cmap="viridis")
    axes.set_xticks(range(matrix.shape[1]), matrix.columns, rotation=30, ha="right")
    axes.set_yticks(range(matrix.shape[0]), matrix.index)
    for (row, column), value in np.ndenumerate(matrix.to_numpy(dtype=float)):
        if np.isnan(value):  # e.g. a personalized model is scored on its own silo's split only
            continue
        axes.text(
            column, row, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "black"
        )
    axes.set(xlabel="test split of silo", ylabel="model", title=f"{metric}: every model on every silo")
    figure.colorbar(image, ax=axes, fraction=0.046)
    figure.tight_layout()
    return figure
