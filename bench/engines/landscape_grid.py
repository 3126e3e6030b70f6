"""Energy landscapes on tensors: two random directions per image (unit L-inf norm), the grid of
E(x + a d1 + b d2, y) over a square of coordinates, batched, and its summaries (flatness, whether
the image is the grid's minimum, the minimum's offset).  ``bench.metrics.landscape`` calls them."""

from __future__ import annotations

import math

import torch

from bench.core.energy import EnergyModel, evaluates
from bench.runtime.execution import Execution


def random_directions(n: int, shape, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Two Gaussian directions per image, each scaled to unit L-inf norm: (n, 2, *shape)."""
    device = generator.device if generator is not None and device is None else device
    d = torch.randn((n, 2, *shape), generator=generator, device=device)
    return d / d.flatten(2).abs().amax(2).view(n, 2, *[1] * len(shape))


def grid_coords(radius: float, resolution: int) -> torch.Tensor:
    """``resolution`` evenly spaced offsets in [-radius, radius]; the middle one of an odd
    resolution is exactly 0."""
    if resolution < 2:
        raise ValueError(f"landscape resolution must be at least 2, got {resolution}")
    half = (resolution - 1) / 2
    return radius * (torch.arange(resolution, dtype=torch.float64) - half) / half


@torch.no_grad()
@evaluates
def energy_grid(model: EnergyModel, x: torch.Tensor, y: torch.Tensor, directions: torch.Tensor,
                coords: torch.Tensor, run: Execution = Execution()) -> torch.Tensor:
    """E(x_i + a d1_i + b d2_i, y_i) for every image i and every pair (a, b) of ``coords``:
    -> (n, R, R) on CPU, first grid axis alpha (d1), second beta (d2).  All n R^2 points are
    evaluated in batches of ``run.batch_size`` on ``run``'s device; under torchrun
    (``run.sharded``) a rank evaluates its share of them and all are gathered in order."""
    device = run.on(x)
    n, r = len(x), len(coords)
    x, y, directions = x.to(device), y.to(device), directions.to(device)
    c = coords.to(device=device, dtype=x.dtype)
    total = n * r * r
    mine = run.my_batches(total)
    out = []
    for k in run.iterate(mine, "landscape", len(mine)):
        flat = torch.arange(k * run.batch_size, min(total, (k + 1) * run.batch_size), device=device)
        img, rest = flat // (r * r), flat % (r * r)
        a, b = c[rest // r], c[rest % r]
        view = (-1, *[1] * (x.dim() - 1))
        pts = x[img] + a.view(view) * directions[img, 0] + b.view(view) * directions[img, 1]
        out.append(model.energy_joint(pts, y[img]).cpu())
    return run.collect(out, x.dtype).view(n, r, r)


def landscape_summary(grid: torch.Tensor, centre: torch.Tensor, coords: torch.Tensor, radius: float) -> dict:
    """Per-image summaries of energy grids (n, R, R) with centre energies (n,): ``flatness``
    (mean grid energy - centre), ``center_is_min`` (bool), ``min_offset`` (distance of the grid
    minimum from the centre / radius), ``min_energy`` and the grid minimum's (alpha, beta)."""
    n, r = grid.shape[:2]
    flat = grid.flatten(1)
    mn, arg = flat.min(1)
    ia, ib = arg // r, arg % r
    ca, cb = coords.double()[ia], coords.double()[ib]
    # the centre is compared with every other grid point (the grid's own centre point, present for
    # an odd resolution, is the image again and may differ from E(x, y) by float rounding)
    at_centre = ((coords == 0).view(r, 1) & (coords == 0).view(1, r)).flatten()
    others = flat[:, ~at_centre].min(1).values if (~at_centre).any() else torch.full_like(centre, math.inf)
    return {
        "flatness": flat.mean(1) - centre,
        "center_is_min": centre <= others,
        "min_offset": torch.sqrt(ca**2 + cb**2) / radius if radius > 0 else torch.zeros(n),
        "min_energy": mn,
        "min_alpha": ca,
        "min_beta": cb,
    }
