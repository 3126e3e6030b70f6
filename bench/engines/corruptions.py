"""The 15 common corruptions of CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019) on batches in torch.

``corrupt(images, name, severity, seed=0, index=None)`` is the public entry point (also
``bench.functional.corrupt``); ``CORRUPTIONS`` lists the names, the file names of the official
release, in its order (``bench.inputs.corrupted``, which reads that release; ``REGISTRY`` follows it); ``PARAMETERS[name]`` holds the five severities' parameters, those of
Hendrycks' ``make_cifar_c.py``.  docs/CORRUPTIONS.md gives each definition, its adaptation to
28x28 grey and 8x8 images, the peer it is tested against and the measured difference.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from bench.core.errors import BenchError
from bench.engines import corrupt_noise_blur as nb
from bench.engines import corrupt_weather as we
from bench.engines.corrupt_ops import Stream
from bench.inputs.corrupted import CORRUPTIONS

_S = 32  # elastic's parameters are fractions of the image side (IMSIZE in make_cifar_c.py)

# name -> (function, the five severities' parameters), in the release's order
REGISTRY = {
    "gaussian_noise": (nb.gaussian_noise, (0.04, 0.06, 0.08, 0.09, 0.10)),
    "shot_noise": (nb.shot_noise, (500, 250, 100, 75, 50)),
    "impulse_noise": (nb.impulse_noise, (0.01, 0.02, 0.03, 0.05, 0.07)),
    "defocus_blur": (nb.defocus_blur, ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))),
    "glass_blur": (nb.glass_blur, ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))),
    "motion_blur": (nb.motion_blur, ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))),
    "zoom_blur": (nb.zoom_blur, tuple(tuple(np.arange(1, stop, 0.01).tolist())
                                     for stop in (1.06, 1.11, 1.16, 1.21, 1.26))),
    "snow": (we.snow, ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
                       (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
                       (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8))),
    "frost": (we.frost, ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))),
    "fog": (we.fog, ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))),
    "brightness": (we.brightness, (0.05, 0.1, 0.15, 0.2, 0.3)),
    "contrast": (we.contrast, (0.75, 0.5, 0.4, 0.3, 0.15)),
    "elastic_transform": (we.elastic_transform, ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06),
                                                 (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))),
    "pixelate": (we.pixelate, (0.95, 0.9, 0.85, 0.75, 0.65)),
    "jpeg_compression": (we.jpeg_compression, (80, 65, 58, 50, 40)),
}
PARAMETERS = {name: params for name, (_, params) in REGISTRY.items()}

# spatial corruptions, whose pixel-sized parameters mean nothing on a tiny image: below
# SMALL_SIDE they run on the image upsampled to 32 (each pixel a block) and are pooled back
SPATIAL = ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "snow", "frost", "fog", "elastic_transform")
SMALL_SIDE = 16
NOT_SMALL = {"glass_blur": "its swaps move pixels by one pixel of the 32x32 upsampled image, a quarter "
                           "pixel here, and the blocks' pooling averages them away: what is left is a "
                           "blur of sigma <= 0.1 pixel, not glass"}


def parameters(name: str, severity: int, side: int = 32) -> tuple | float:
    """The parameters ``name`` runs with at ``severity`` on an image of this side (elastic's scale
    with it, as ``make_cifar_c.py``'s IMSIZE; the others are in pixels or relative already)."""
    p = PARAMETERS[name][severity - 1]
    return tuple(v * side for v in p) if name == "elastic_transform" else p


def available(shape) -> tuple[str, ...]:
    """The corruptions defined for images of this (C, H, W) shape."""
    small = min(shape[-2:]) < SMALL_SIDE
    return tuple(n for n in CORRUPTIONS if not (small and n in NOT_SMALL))


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0,
            index: torch.Tensor | None = None) -> torch.Tensor:
    """One CIFAR-10-C corruption of a batch, as ``make_cifar_c.py`` makes the official set.

    images: (N, C, H, W) float in [0, 1], C = 3 (RGB) or 1 (grey), on any device; the result has
    the same shape, dtype and device, clipped to [0, 1] and on the uint8 grid (truncated to
    k / 255, as the official set stores ``np.uint8`` of the corrupted image).
    name: one of ``CORRUPTIONS`` (gaussian_noise, shot_noise, impulse_noise, defocus_blur,
    glass_blur, motion_blur, zoom_blur, snow, frost, fog, brightness, contrast, elastic_transform,
    pixelate, jpeg_compression); severity: 1 to 5.
    seed, index: each point's random draws (noise, angles, crops, swaps) come from a counter-based
    hash of (seed, its index, name, severity), so a point is corrupted the same whatever batch it
    is in and on whatever device; ``index`` (N,) gives the points' indices in their data set
    (default ``arange(N)``: pass it when corrupting a data set in batches).

    At 32x32 RGB the parameters, borders, interpolation and colour conversions are those of
    ``make_cifar_c.py``.  28x28 grey images take the same pixel parameters (image-size terms, such
    as the fog map's crop, the frost crop and elastic's scale, follow the side); images with a side
    below 16 (the 8x8 digits) run the spatial corruptions on the image upsampled to 32x32 (each
    pixel a block, as the digits were pooled from 32x32 bitmaps) and average the blocks back,
    except glass blur, which is not defined there; see docs/CORRUPTIONS.md.  Batched and
    vectorised on the device, except JPEG (Pillow, a CPU round trip per image).

    >>> x = torch.full((2, 3, 32, 32), 0.5)
    >>> corrupt(x, "contrast", 5).shape
    torch.Size([2, 3, 32, 32])
    >>> bool(torch.equal(corrupt(x, "shot_noise", 3, seed=1), corrupt(x, "shot_noise", 3, seed=1)))
    True
    """
    x = _check(images, name, severity)
    k = torch.round(x * 255.0)
    # images read from uint8 (k / 255 in float32) are taken as those integers, as make_cifar_c.py
    # reads them; other images are corrupted as they are
    x255 = k if bool(((x * 255.0 - k).abs() < 1e-3).all()) else x * 255.0
    n, c, h, w = x.shape
    if index is None:
        index = torch.arange(n)
    index = torch.as_tensor(index).to(device=x.device, dtype=torch.int64).reshape(-1)
    if len(index) != n:
        raise BenchError(f"corrupt: index has {len(index)} entries for {n} images")
    fn = REGISTRY[name][0]
    rng = Stream(seed, index, f"{name}|{severity}")
    small = min(h, w) < SMALL_SIDE
    if n == 0:
        return images.clone()
    if small and name in SPATIAL:
        f = math.ceil(32 / max(h, w))
        up = x255.repeat_interleave(f, 2).repeat_interleave(f, 3)
        out = fn(up, rng, parameters(name, severity, up.shape[2])).clamp(0, 255)
        out = torch.nn.functional.avg_pool2d(out, f)
    else:
        out = fn(x255, rng, parameters(name, severity, h)).clamp(0, 255)
    return (torch.floor(out) / 255.0).to(images.dtype)


def _check(images, name: str, severity) -> torch.Tensor:
    if name not in REGISTRY:
        raise BenchError(f"unknown corruption {name!r}; expected one of {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise BenchError(f"corruption severity must be an integer from 1 to 5, got {severity!r}")
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3) \
            or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise BenchError(f"corrupt expects a float batch (N, C, H, W) with C = 1 or 3, got {shape}")
    if min(images.shape[-2:]) < SMALL_SIDE and name in NOT_SMALL:
        raise BenchError(f"{name} is not defined on {images.shape[-2]}x{images.shape[-1]} images: {NOT_SMALL[name]}")
    x = images.detach().double()
    if x.numel() and (not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1):
        raise BenchError("corrupt expects images in [0, 1]")
    return x
