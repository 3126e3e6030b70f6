"""The building blocks of the common corruptions (``bench.engines.corruptions``), on batches in torch.

``Stream``: each point's own random numbers, a counter-based hash of (seed, point index, corruption,
severity, field, element), so a point's corruption depends on nothing else: not on the batch it is
in, not on the device (integer arithmetic, the same on CPU and GPU).  The rest are the filters and
resamplers ``make_cifar_c.py`` calls, with their exact conventions: scipy's Gaussian filter
(``skimage.filters.gaussian``) and its border modes, scipy's linear ``zoom`` as Hendrycks'
``clipped_zoom`` uses it, Pillow's fixed-point BOX resize, bilinear sampling with scipy's and
OpenCV's borders, and a Poisson sampler by exact inversion.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

M32 = 0xFFFFFFFF


def _mul32(a: torch.Tensor, c: int) -> torch.Tensor:
    """(a * c) mod 2**32 for int64 ``a`` in [0, 2**32), exact (no int64 overflow)."""
    return (a * (c & 0xFFFF) + (((a * (c >> 16)) & 0xFFFF) << 16)) & M32


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (Wellons' lowbias32) on int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


class Stream:
    """Uniform random numbers per point, keyed by (seed, point index, tag): ``uniform(field, shape)``
    is (N, *shape) in (0, 1), the same for a point whatever else is in the batch."""

    def __init__(self, seed: int, index: torch.Tensor, tag: str):
        base = int.from_bytes(hashlib.sha256(f"{int(seed)}|{tag}".encode()).digest()[:4], "little")
        idx = index.to(torch.int64)
        self.key = _mix(_mix((idx & M32) ^ base) ^ ((idx >> 32) & M32))
        self.n = len(idx)

    def uniform(self, field: int, shape) -> torch.Tensor:
        shape = tuple(shape)
        k = _mix((self.key + _mul32(torch.full_like(self.key, field + 1), 0x9E3779B1)) & M32)
        ctr = torch.arange(math.prod(shape), device=self.key.device, dtype=torch.int64)
        h = _mix(_mix((k[:, None] + _mul32(ctr, 0x85EBCA77)[None]) & M32) ^ k[:, None])
        return ((h.double() + 0.5) / 2.0**32).view(self.n, *shape)

    def normal(self, field: int, shape) -> torch.Tensor:
        """Standard normals (Box-Muller on two uniforms)."""
        u = self.uniform(field, (2, *shape))
        return torch.sqrt(-2.0 * torch.log(u[:, 0])) * torch.cos(2.0 * math.pi * u[:, 1])

    def integers(self, field: int, low, high, shape=()) -> torch.Tensor:
        """Integers in [low, high) (numpy's ``randint``); ``high`` may be an (N,) tensor."""
        u = self.uniform(field, shape)
        span = torch.as_tensor(high, device=u.device, dtype=torch.float64) - low
        span = span.view(-1, *([1] * len(shape))) if span.ndim else span
        return (low + torch.floor(u * span)).long()


def border_index(n: int, idx: torch.Tensor, mode: str) -> torch.Tensor:
    """Integer positions outside [0, n) mapped back by a border rule: scipy's ``nearest`` (edge
    repeated), ``reflect`` (d c b a | a b c d) or ``mirror`` (d c b | a b c d, OpenCV's
    BORDER_REFLECT_101)."""
    if mode == "nearest" or n == 1:
        return idx.clamp(0, n - 1)
    if mode == "reflect":
        i = idx % (2 * n)
        return torch.where(i >= n, 2 * n - 1 - i, i)
    if mode == "mirror":
        i = idx % (2 * n - 2)
        return torch.where(i >= n, 2 * n - 2 - i, i)
    raise ValueError(mode)


def correlate1d(x: torch.Tensor, weights: torch.Tensor, dim: int, mode: str) -> torch.Tensor:
    """scipy.ndimage.correlate1d of ``x`` along ``dim`` with a centred odd-length kernel; a symmetric
    kernel is summed as scipy sums it, w0 x0 + sum over j = r..1 of w_j (x_-j + x_j), so that the
    rounding, and hence a truncation to uint8 after it, is scipy's."""
    r = (len(weights) - 1) // 2
    n = x.shape[dim]
    idx = border_index(n, torch.arange(-r, n + r, device=x.device), mode)
    xp = x.index_select(dim, idx)
    w = weights.tolist()
    if w == w[::-1]:
        out = w[r] * xp.narrow(dim, r, n)
        for j in range(r, 0, -1):
            out = out + (xp.narrow(dim, r - j, n) + xp.narrow(dim, r + j, n)) * w[r - j]
        return out
    out = torch.zeros_like(x)
    for j, wj in enumerate(w):
        out += wj * xp.narrow(dim, j, n)
    return out


def gaussian_weights(sigma: float, truncate: float) -> torch.Tensor:
    """scipy's 1-D Gaussian kernel: radius int(truncate * sigma + 0.5), normalised to sum 1."""
    r = int(truncate * float(sigma) + 0.5)
    x = np.arange(-r, r + 1)
    phi = np.exp(-0.5 / (float(sigma) ** 2) * x**2) if sigma > 0 else (x == 0).astype(float)
    return torch.from_numpy(phi / phi.sum())


def gaussian_filter(x: torch.Tensor, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> torch.Tensor:
    """``skimage.filters.gaussian`` over the last two axes (rows, then columns) of a float64 batch."""
    if sigma <= 1e-15:
        return x
    w = gaussian_weights(sigma, truncate)
    return correlate1d(correlate1d(x, w, -2, mode), w, -1, mode)


def clipped_zoom_matrix(n: int, zoom: float) -> torch.Tensor:
    """Hendrycks' ``clipped_zoom`` along one axis as an (n, n) matrix: crop the central
    ceil(n / zoom) pixels, ``scipy.ndimage.zoom(order=1)`` them to round(ch * zoom) and keep the
    central n (his CIFAR code; ``imagecorruptions`` keeps the first n instead)."""
    ch = int(np.ceil(n / zoom))
    top = (n - ch) // 2
    out = int(round(ch * zoom))
    scale = (ch - 1) / (out - 1) if out > 1 else 0.0
    trim = (out - n) // 2
    a = np.zeros((n, n))
    for j in range(n):
        c = (j + trim) * scale
        i0 = min(int(np.floor(c)), ch - 1)
        f = c - i0
        a[j, top + i0] += 1.0 - f
        if f > 0:
            a[j, top + min(i0 + 1, ch - 1)] += f
    return torch.from_numpy(a)


def apply_rows_cols(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """rows @ x @ cols^T on the last two axes (a separable linear resampling)."""
    return torch.matmul(torch.matmul(rows.to(x), x), cols.to(x).T)


PIL_PRECISION_BITS = 32 - 8 - 2


def pil_box_weights(n_in: int, n_out: int) -> torch.Tensor:
    """Pillow's BOX resampling along one axis (``precompute_coeffs`` then its 8-bit fixed point,
    ``normalize_coeffs_8bpc``) as an integer (n_out, n_in) matrix."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    a = np.zeros((n_out, n_in))
    for xx in range(n_out):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), n_in) - xmin
        ss = 1.0 / filterscale
        k = np.array([1.0 if -0.5 < (x + xmin - center + 0.5) * ss <= 0.5 else 0.0
                      for x in range(xmax)])
        if k.sum() != 0:
            k = k / k.sum()
        a[xx, xmin:xmin + xmax] = np.trunc(k * (1 << PIL_PRECISION_BITS) + 0.5)
    return torch.from_numpy(a)


def pil_box_resize(u8: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``PIL.Image.resize((w, h), Image.BOX)`` of uint8 values held in float64 (N, C, H, W):
    the horizontal pass, then the vertical, each rounded to uint8 as Pillow does."""
    one = 2.0 ** (PIL_PRECISION_BITS - 1)
    scale = 2.0**PIL_PRECISION_BITS
    if w != u8.shape[-1]:
        u8 = torch.floor((one + torch.matmul(u8, pil_box_weights(u8.shape[-1], w).to(u8).T)) / scale).clamp(0, 255)
    if h != u8.shape[-2]:
        u8 = torch.floor((one + torch.matmul(pil_box_weights(u8.shape[-2], h).to(u8), u8)) / scale).clamp(0, 255)
    return u8


def _reflect_coordinate(c: torch.Tensor, n: int) -> torch.Tensor:
    """scipy's ``reflect`` mode on a continuous coordinate (ni_interpolation's map_coordinate)."""
    s = 2 * n
    neg = c < 0
    cn = torch.where(c < -s, s * torch.trunc(-c / s) + c, c)
    cn = torch.where(cn < -n, cn + s, -cn - 1)
    cp = c - s * torch.trunc(c / s)
    cp = torch.where(cp >= n, s - cp - 1, cp)
    return torch.where(neg, cn, torch.where(c > n - 1, cp, c))


def sample_bilinear(img: torch.Tensor, sy: torch.Tensor, sx: torch.Tensor, mode: str) -> torch.Tensor:
    """img (N, C, H, W) at per-image row/column coordinates sy, sx (N, H', W'), bilinearly:
    ``reflect`` is scipy's ``map_coordinates(order=1, mode='reflect')``, ``mirror`` OpenCV's
    INTER_LINEAR with BORDER_REFLECT_101."""
    n, c, h, w = img.shape
    if mode == "reflect":
        sy, sx = _reflect_coordinate(sy, h), _reflect_coordinate(sx, w)
    y0, x0 = torch.floor(sy), torch.floor(sx)
    fy, fx = (sy - y0)[:, None], (sx - x0)[:, None]
    y0, x0 = y0.long(), x0.long()
    flat = img.reshape(n, c, h * w)

    def at(yy, xx):
        i = border_index(h, yy, mode) * w + border_index(w, xx, mode)
        return flat.gather(2, i.reshape(n, 1, -1).expand(n, c, -1)).view(n, c, *sy.shape[1:])

    return ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1))
            + fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1)))


def poisson(rate: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Poisson(rate) draws by exact inversion of the CDF at the uniforms ``u``: the smallest k with
    P(X <= k) >= u (float64, elementwise, any device).  The Cornish-Fisher quantile
    rate + z sqrt(rate) + (z^2 - 1) / 6 is the first guess, P(X <= k) = Q(k + 1, rate) its CDF, and
    steps of one, adding or removing the probability of k (p(k + 1) = p(k) rate / (k + 1)), move
    it to the exact quantile (a step or two)."""
    pos = rate > 0
    z = torch.special.ndtri(u)
    k = torch.where(pos, torch.floor(rate + z * torch.sqrt(rate) + (z * z - 1) / 6 + 0.5).clamp_min(0), 0.0)
    cdf = torch.special.gammaincc(k + 1, rate)
    pk = torch.where(pos, torch.exp(k * torch.log(rate.clamp_min(1e-300)) - rate - torch.lgamma(k + 1)), 1.0)
    while True:
        up = cdf < u
        down = ~up & (cdf - pk >= u) & (k > 0)
        if not bool((up | down).any()):
            return k
        p_up = pk * rate / (k + 1)
        cdf = torch.where(up, cdf + p_up, torch.where(down, cdf - pk, cdf))
        pk = torch.where(up, p_up, torch.where(down, pk * k / rate.clamp_min(1e-300), pk))
        k = k + up.double() - down.double()
