"""The in-memory form of a data set: inputs, string labels and an optional silo column."""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Examples:
    """Texts (a list of str) or images (uint8 array N x C x H x W) with their labels."""

    inputs: list[str] | np.ndarray
    labels: np.ndarray
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def is_image(self) -> bool:
        return isinstance(self.inputs, np.ndarray)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """C x H x W of the images; () for texts."""
        return tuple(self.inputs.shape[1:]) if self.is_image else ()

    def take(self, indices: np.ndarray) -> "Examples":
        indices = np.asarray(indices, dtype=int)
        inputs = self.inputs[indices] if self.is_image else [self.inputs[i] for i in indices]
        groups = None if self.groups is None else self.groups[indices]
        return Examples(inputs, self.labels[indices], groups)

    def label_counts(self) -> dict[str, int]:
        names, counts = np.unique(self.labels, return_counts=True)
        return {str(n): int(c) for n, c in zip(names, counts)}


def concat(parts: list[Examples]) -> Examples:
    """Join several Examples of the same kind into one."""
    if parts[0].is_image:
        inputs = np.concatenate([p.inputs for p in parts])
    else:
        inputs = [text for p in parts for text in p.inputs]
    labels = np.concatenate([p.labels for p in parts])
    groups = None if any(p.groups is None for p in parts) else np.concatenate([p.groups for p in parts])
    return Examples(inputs, labels, groups)
