"""The official corrupted test sets from disk: CIFAR-10-C and CIFAR-100-C (Hendrycks & Dietterich).

``--dataset cifar10-c`` (``cifar100-c``) with ``--data-root DIR`` reads ``DIR/CIFAR-10-C/``
(``DIR/CIFAR-100-C/``) as the release lays it out: ``<corruption>.npy``, uint8 (5 n, 32, 32, 3),
severities 1 to 5 one after the other, each the n test images in their order, and ``labels.npy``
(5 n,), the test labels repeated five times.  The data set's train and test splits are the clean
CIFAR-10 (CIFAR-100) from the same ``DIR`` (the corrupted images are its test set corrupted, point
by point, so a model's clean and corrupted numbers are on the same points); the corrupted images
are ``Dataset.info["corrupted"]``, a ``CorruptedSet`` read lazily (memory-mapped), one
(corruption, severity) at a time.  Any of the 15 corruptions may be absent; at least one and
``labels.npy`` are needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.core.errors import BenchError

# the release's file names, in its order (bench.engines.corruptions computes the same 15)
CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
               "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
               "elastic_transform", "pixelate", "jpeg_compression")
SEVERITIES = 5
FOLDERS = {"cifar10-c": ("cifar10", "CIFAR-10-C"), "cifar100-c": ("cifar100", "CIFAR-100-C")}


@dataclass
class CorruptedSet:
    """A folder in the release's layout: ``split(corruption, severity)`` is that set's images."""

    folder: Path
    corruptions: tuple[str, ...]  # those present, in the release's order
    labels: torch.Tensor  # (n,) int64, the labels of one severity (the same for all five)

    def __len__(self) -> int:
        return len(self.labels)

    def images(self, corruption: str, severity: int, n: int | None = None) -> torch.Tensor:
        """The first n images (all by default) of ``corruption`` at ``severity``: (n, 3, H, W) float32
        in [0, 1]."""
        if corruption not in self.corruptions:
            raise BenchError(f"{self.folder}: no {corruption}.npy (present: {', '.join(self.corruptions)})")
        if not (isinstance(severity, int) and 1 <= severity <= SEVERITIES):
            raise BenchError(f"corruption severity must be an integer from 1 to 5, got {severity!r}")
        m = len(self) if n is None else min(n, len(self))
        arr = np.load(self.folder / f"{corruption}.npy", mmap_mode="r")
        block = np.ascontiguousarray(arr[(severity - 1) * len(self):(severity - 1) * len(self) + m])
        return torch.from_numpy(block).permute(0, 3, 1, 2).float() / 255.0


def read_corrupted(folder: Path, what: str = "corrupted set") -> CorruptedSet:
    """Check a folder in the release's layout and index it (the arrays stay on disk)."""
    expected = f"{folder}/labels.npy and <corruption>.npy for {', '.join(CORRUPTIONS[:2])}, ... {CORRUPTIONS[-1]}"
    present = tuple(c for c in CORRUPTIONS if (folder / f"{c}.npy").is_file())
    if not (folder / "labels.npy").is_file() or not present:
        raise BenchError(f"{what} not found: expected {expected} (uint8, 5 x 10,000 images each)")
    labels = _read(folder / "labels.npy")
    if labels.ndim != 1 or len(labels) % SEVERITIES or not np.issubdtype(labels.dtype, np.integer):
        raise BenchError(f"{folder}/labels.npy: expected 5 x n integer labels, got shape {labels.shape} {labels.dtype}")
    n = len(labels) // SEVERITIES
    first = labels[:n]
    if any(not np.array_equal(labels[s * n:(s + 1) * n], first) for s in range(1, SEVERITIES)):
        raise BenchError(f"{folder}/labels.npy: the five severities' labels differ (not the release's layout)")
    for c in present:
        arr = _read(folder / f"{c}.npy")
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[0] != len(labels) or arr.shape[3] != 3:
            raise BenchError(f"{folder}/{c}.npy: expected uint8 ({len(labels)}, H, W, 3) like labels.npy, "
                             f"got {arr.dtype} {arr.shape}")
    return CorruptedSet(folder, present, torch.from_numpy(first.astype(np.int64)))


def _read(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:
        raise BenchError(f"cannot read {path}: {type(e).__name__}: {e}") from None


def load_cifar_c(name: str, data_root, load_clean):
    """``cifar10-c`` / ``cifar100-c``: the clean data set (``load_clean(name)``, the CIFAR reader of
    ``bench.inputs.data``) with its corrupted test set in ``info["corrupted"]`` (module docstring);
    the corrupted set's labels must be the clean test labels, in order."""
    clean, folder = FOLDERS[name]
    root = Path(data_root or "data").expanduser()
    corrupted = read_corrupted(root / folder, name)
    try:
        ds = load_clean(clean)
    except BenchError as e:
        raise BenchError(f"{name} needs the clean {clean} beside {root / folder}: {e}") from None
    test = ds.test.subset(len(corrupted))
    if len(test) < len(corrupted) or not torch.equal(test.y, corrupted.labels):
        raise BenchError(f"{root / folder}/labels.npy are not the first {len(corrupted)} labels of {clean}'s "
                         "test set, in order: the corrupted images would not be those points")
    ds.name, ds.test = name, test
    ds.info.update({"corrupted": corrupted, "corrupted_root": str(root / folder)})
    return ds
