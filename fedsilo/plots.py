"""Figures people would rather look at than read; matplotlib only, no MLflow here."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def accuracy_by_round(
    federation: dict[int, float], silos: dict[str, dict[str, dict[int, float]]]
) -> plt.Figure:
    """Global accuracy on the union (bold), each silo's global (solid) and local (dashed) accuracy."""
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
    axes.set(xlabel="round", ylabel="test accuracy", ylim=(0, 1.02), title="Accuracy by round")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    return figure
