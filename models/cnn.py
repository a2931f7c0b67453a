"""The founding document's CNN: two 5x5 conv layers (20, 50 channels) and a 500-unit hidden layer."""

import torch
from torch import nn


class LeNet(nn.Module):
    """LeNet-style CNN generalised to any channel count, square image size and class count."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10):
        super().__init__()
        if image_size < 16:
            raise ValueError(f"image_size must be at least 16 pixels, got {image_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 20, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 50, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = ((image_size - 4) // 2 - 4) // 2
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(50 * side * side, 500), nn.ReLU())
        self.classifier = nn.Linear(500, num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.hidden(self.features(pixel_values)))


def build_cnn(in_channels: int, image_size: int, num_classes: int, seed: int = 0) -> LeNet:
    """A freshly initialised LeNet; every caller with the same seed gets the same weights."""
    torch.manual_seed(seed)
    return LeNet(in_channels, image_size, num_classes)
