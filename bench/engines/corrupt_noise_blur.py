"""Noise and blur corruptions of ``make_cifar_c.py`` on batches: each takes float64 images
(N, C, H, W) on the 0..255 scale, the point's random ``Stream`` and the severity's parameters, and
returns 0..255 values before the final clip and uint8 truncation (``bench.engines.corruptions``)."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from bench.engines.corrupt_ops import (
    Stream,
    apply_rows_cols,
    border_index,
    clipped_zoom_matrix,
    correlate1d,
    gaussian_filter,
    poisson,
)


def gaussian_noise(x: torch.Tensor, rng: Stream, c: float) -> torch.Tensor:
    """x + N(0, c^2) per pixel and channel, on [0, 1]."""
    return ((x / 255.0 + c * rng.normal(0, x.shape[1:])).clamp(0, 1)) * 255.0


def shot_noise(x: torch.Tensor, rng: Stream, c: float) -> torch.Tensor:
    """Poisson(c x) / c per pixel and channel, on [0, 1]."""
    return (poisson(x / 255.0 * c, rng.uniform(0, x.shape[1:])) / c).clamp(0, 1) * 255.0


def impulse_noise(x: torch.Tensor, rng: Stream, amount: float) -> torch.Tensor:
    """skimage's ``random_noise(mode='s&p', amount=c)``: each pixel and channel replaced with
    probability c, by 1 or 0 with equal chance."""
    flipped = rng.uniform(0, x.shape[1:]) < amount
    salted = rng.uniform(1, x.shape[1:]) < 0.5
    return torch.where(flipped, torch.where(salted, 255.0, 0.0), x)


def disk_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """Hendrycks' ``disk``: the aliased disk X^2 + Y^2 <= r^2 on a 17x17 grid (radius <= 8), normalised,
    then ``cv2.GaussianBlur`` (3x3, or 5x5 for a larger radius; BORDER_REFLECT_101); trimmed of its
    zero border (the same filter)."""
    half, ksize = (8, 3) if radius <= 8 else (int(radius), 5)
    grid = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(grid, grid)
    disk = ((xx**2 + yy**2) <= radius**2).astype(np.float32)
    disk = torch.from_numpy(disk / disk.sum()).double()
    t = np.arange(ksize) - (ksize - 1) / 2
    g = np.exp(-(t**2) / (2 * alias_blur**2))
    g = torch.from_numpy(g / g.sum())
    k = correlate1d(correlate1d(disk, g, 0, "mirror"), g, 1, "mirror").float().double()  # OpenCV's float32
    nz = k.abs().sum(0).nonzero()
    r = int(max(half - int(nz.min()), int(nz.max()) - half))
    return k[half - r:half + r + 1, half - r:half + r + 1]


def filter2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``cv2.filter2D(x, -1, kernel)`` per channel: correlation, centred, BORDER_REFLECT_101."""
    n, c, h, w = x.shape
    r = (kernel.shape[0] - 1) // 2
    rows = border_index(h, torch.arange(-r, h + r, device=x.device), "mirror")
    cols = border_index(w, torch.arange(-r, w + r, device=x.device), "mirror")
    xp = x.index_select(2, rows).index_select(3, cols).reshape(n * c, 1, h + 2 * r, w + 2 * r)
    return F.conv2d(xp, kernel.to(x)[None, None]).view(n, c, h, w)


def defocus_blur(x: torch.Tensor, rng: Stream, c: tuple) -> torch.Tensor:
    """The image filtered with ``disk(radius, alias_blur)``."""
    return filter2d(x / 255.0, disk_kernel(*c)).clamp(0, 1) * 255.0


@functools.lru_cache(maxsize=16)
def _fronts(h: int, w: int) -> tuple:
    """The swap positions of glass blur's scan (rows h-1..2, in each columns w-1..2) grouped into
    wavefronts of equal 2*row + column, latest-first: no two positions of a front are king
    neighbours, so their swaps (with the pixel above and/or left, or none) touch disjoint pixels,
    and every swap that can touch a pixel a later front touches comes in an earlier front, in the
    scan's own order."""
    fronts = {}
    for r in range(h - 1, 1, -1):
        for col in range(w - 1, 1, -1):
            fronts.setdefault(2 * r + col, []).append(r * w + col)
    return tuple(torch.tensor(fronts[f]) for f in sorted(fronts, reverse=True))


def glass_swaps(u8: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Hendrycks' sequential pixel swaps, ``for h in range(H-1, 1, -1): for w in range(W-1, 1, -1):
    swap x[h, w] with x[h + dy, w + dx]`` (dx, dy in {-1, 0}, per image and position: (N, H, W)),
    done front by front (``_fronts``): about 3H batched steps instead of H*W per image."""
    n, c, h, w = u8.shape
    flat = u8.reshape(n, c, h * w).clone()
    off = (dy * w + dx).reshape(n, h * w)
    for p in _fronts(h, w):
        p = p.to(u8.device)
        t = (p[None] + off[:, p])[:, None].expand(n, c, len(p))
        vp, vt = flat[:, :, p], flat.gather(2, t)
        flat[:, :, p] = vt
        flat.scatter_(2, t, vp)
    return flat.view(n, c, h, w)


def glass_shifts(rng: Stream, iteration: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """dx, dy of one pass, numpy's ``randint(-1, 1)`` (so -1 or 0) per position: (N, H, W) each."""
    d = rng.integers(iteration, -1, 1, (2, h, w))
    return d[:, 0], d[:, 1]


def glass_blur(x: torch.Tensor, rng: Stream, c: tuple) -> torch.Tensor:
    """Gaussian blur, truncated to uint8, ``iterations`` passes of local pixel swaps, blurred again."""
    sigma, delta, iterations = c
    if delta != 1:
        raise ValueError("glass blur's batched swaps need max_delta 1 (all CIFAR-10-C severities)")
    u8 = torch.floor(gaussian_filter(x / 255.0, sigma) * 255.0).clamp(0, 255)
    for i in range(iterations):
        u8 = glass_swaps(u8, *glass_shifts(rng, i, x.shape[2], x.shape[3]))
    return gaussian_filter(u8 / 255.0, sigma).clamp(0, 1) * 255.0


def motion_kernel(radius: int, sigma: float) -> torch.Tensor:
    """ImageMagick's MotionBlurImage kernel: width 2 radius + 1, exp(-i^2 / 2 sigma^2), normalised."""
    i = np.arange(2 * radius + 1)
    k = np.exp(-(i**2) / (2 * sigma**2)) / (math.sqrt(2 * math.pi) * sigma)
    return torch.from_numpy(k / k.sum())


def motion(x: torch.Tensor, radius: int, sigma: float, angle: torch.Tensor) -> torch.Tensor:
    """ImageMagick's ``MotionBlurImage(radius, sigma, angle)`` (what make_cifar_c.py calls through
    Wand), per image angle in degrees (N,): sum_i k_i x[y + oy_i, x + ox_i], offsets
    ceil(i sin / cos - 0.5) along the angle, the edge pixel repeated beyond the border."""
    n, c, h, w = x.shape
    k = motion_kernel(radius, sigma).tolist()
    th = torch.deg2rad(angle.double())
    px, py = len(k) * torch.sin(th), len(k) * torch.cos(th)
    hyp = torch.hypot(px, py)
    ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    flat = x.reshape(n, c, h * w)
    out = torch.zeros_like(x)
    for i, ki in enumerate(k):
        oy = torch.ceil(i * px / hyp - 0.5).long()
        ox = torch.ceil(i * py / hyp - 0.5).long()
        rows = (ys[None] + oy[:, None]).clamp(0, h - 1)
        cols = (xs[None] + ox[:, None]).clamp(0, w - 1)
        idx = (rows[:, :, None] * w + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
        out += ki * flat.gather(2, idx).view(n, c, h, w)
    return out


def motion_blur(x: torch.Tensor, rng: Stream, c: tuple) -> torch.Tensor:
    """Motion blur at an angle uniform in [-45, 45) degrees, rounded to uint8 as the PNG that the
    official code reads back from ImageMagick."""
    angle = -45.0 + 90.0 * rng.uniform(0, ())
    return torch.round(motion(x, c[0], c[1], angle).clamp(0, 255))


def zoom_blur(x: torch.Tensor, rng: Stream, zooms: tuple) -> torch.Tensor:
    """The mean of the image and its ``clipped_zoom``s at each factor, in float32 as make_cifar_c.py
    computes it (each zoom rounded to float32, summed in float32), so its truncation to uint8 too."""
    x32 = (x / 255.0).float()
    out = torch.zeros_like(x32)
    for z in zooms:
        out += apply_rows_cols(x32.double(), clipped_zoom_matrix(x.shape[2], z),
                               clipped_zoom_matrix(x.shape[3], z)).float()
    return (((x32 + out) / (len(zooms) + 1)).clamp(0, 1) * 255).double()
