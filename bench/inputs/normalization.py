"""A model's input normalisation: the ``--normalize`` presets and syntax (``parse_normalize``) and
the ``model.normalization`` record of results.json (``record``: the mean and std used, and where
they come from)."""

from __future__ import annotations

import math

import torch

from bench.core.energy import EnergyModel
from bench.core.errors import BenchError

# --normalize presets: (mean, std) per channel.  CIFAR-10/100: the per-channel mean and standard
# deviation of the training images' pixels in [0, 1]; imagenet: torchvision's ImageNet constants.
NORMALIZE_PRESETS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "none": ((0.0,), (1.0,)),
    "half": ((0.5,), (0.5,)),
}
PLAIN_STATE_DICT_WARNING = ("a plain state dict records no normalisation: using mean 0, std 1 (the network sees "
                            "[0, 1] pixels); if it was trained on normalised inputs pass --normalize "
                            "(e.g. cifar10, imagenet or M1,M2,M3/S1,S2,S3)")


def parse_normalize(spec: str) -> tuple[list[float], list[float]]:
    """``--normalize``: a preset name (``NORMALIZE_PRESETS``) or ``M1,M2,M3/S1,S2,S3`` (one value or
    one per channel each) -> (mean, std).  Bad input is a one-line BenchError."""
    text = str(spec).strip()
    if text.lower() in NORMALIZE_PRESETS:
        mean, std = NORMALIZE_PRESETS[text.lower()]
        return list(mean), list(std)
    hint = f"expected one of {', '.join(NORMALIZE_PRESETS)} or MEAN/STD such as 0.4914,0.4822,0.4465/0.2470,0.2435,0.2616"
    if text.count("/") != 1:
        raise BenchError(f"--normalize {spec!r}: {hint}")
    try:
        mean, std = ([float(v) for v in part.split(",")] for part in text.split("/"))
    except ValueError:
        raise BenchError(f"--normalize {spec!r}: not numbers; {hint}") from None
    if not all(math.isfinite(v) for v in mean + std):
        raise BenchError(f"--normalize {spec!r}: values must be finite")
    if any(v <= 0 for v in std):
        raise BenchError(f"--normalize {spec!r}: std must be positive")
    if len(mean) != len(std) and 1 not in (len(mean), len(std)):
        raise BenchError(f"--normalize {spec!r}: {len(mean)} means but {len(std)} stds")
    return mean, std


def floats(v) -> list[float]:
    return torch.as_tensor(v, dtype=torch.float32).flatten().tolist()


def record(model: EnergyModel, source: str, warning: str | None = None) -> dict:
    """The ``model.normalization`` record of results.json: the mean and std used, and where from."""
    return {"mean": floats(model.mean), "std": floats(model.std), "source": source, "warning": warning}
