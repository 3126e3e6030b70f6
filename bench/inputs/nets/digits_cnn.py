"""A small CNN for 8x8 digits (about 0.1 M parameters); works on any input size."""

from torch import nn

from bench.inputs.nets.layers import activation, norm2d


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32,
                 act: str = "silu", norm: str | None = None):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), norm2d(norm, w), activation(act),
            nn.Conv2d(w, 2 * w, 3, padding=1), norm2d(norm, 2 * w), activation(act),
            nn.AvgPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), norm2d(norm, 4 * w), activation(act),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))
