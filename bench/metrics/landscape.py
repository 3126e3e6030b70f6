"""Energy landscape around test images (suite ``landscape``; paper Fig. 2, 13, 14).

For each of the first ``landscape_images`` test images x (label y) two random directions d1, d2
are drawn (Gaussian, each scaled to unit L-inf norm, from the group's own generator), and the
joint energy is evaluated on the plane

    E(x + alpha d1 + beta d2, y),   alpha, beta on a regular grid of ``landscape_resolution``
                                    points in [-radius, radius] (radius: ``landscape_radius``,
                                    default 2 eps)

all grid points of all images in batches.  Each direction moves every pixel by at most |alpha|
(|beta|); the perturbed images are not clamped to [0, 1], so the plane is the energy function's
own neighbourhood of x (as in loss-landscape plots).  An odd resolution puts the image itself at
the grid's centre (offset exactly 0); the centre energy E(x, y) is evaluated on its own as well.

Figures: ``figures/landscape_<i>.png`` per image and ``figures/landscape.png`` with all of them;
darker is lower energy, the blue star is the image, the white cross the grid's minimum.

Metrics (see docs/CONVENTIONS.md, "Metric names"; they summarise what the paper reads off the contours:
"the points with the lowest energy of the normal and the robust classifier deviate from the
real image ... in the energy of JEAT the real image has the minimum energy and the energy
function is flat and smooth around the real data", Sec. G.1):

``landscape_flatness``       mean over images of (mean energy over the grid - E(x, y)): how far,
                             on average, the energy lies above the image's own in its
                             neighbourhood.  Near 0: flat; large and positive: a steep basin at
                             x; negative: x lies above its surroundings (lower energy nearby).
``landscape_center_is_min``  fraction of images whose own energy E(x, y) is the lowest on the
                             grid (no grid point lower), i.e. x sits at the local minimum.
``landscape_min_offset``     mean over images of the distance of the grid's lowest point from
                             the centre in the (alpha, beta) plane, in units of the radius
                             (0: the minimum is the image; sqrt 2: a corner).

``std`` is the standard error over images (sd / sqrt(n); for the fraction sqrt(p(1-p)/n)).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from bench.core import cost, settings
from bench.core.stats import mean_se, proportion_se
from bench.metrics import MEAN, STABLE, Metric, Result, register

if TYPE_CHECKING:
    from bench.metrics.context import Context


def landscape_cost(s, z: cost.Sizes) -> cost.Work:
    """One forward per grid point per image; a contour figure per image and one of them all, each
    contour with its colour bar (an axes with ticks and a label: two chart panels)."""
    n = cost.count(s, "landscape_images", z.n_test)
    return (cost.passes("forward", n * int(s["landscape_resolution"]) ** 2, cost.batch(s))
            + cost.charts(n, 2) + cost.charts(1, 2 * n))


@register("landscape", "landscape", cost=landscape_cost,
          metrics=(Metric("landscape_flatness", "energy", column="Flatness", tolerance=MEAN, portable=STABLE),
                   Metric.proportion("landscape_center_is_min", higher_is_better=None, display="float",
                                     column="Centre is min"),
                   Metric("landscape_min_offset", "radius", column="Min offset", tolerance=MEAN, range=math.sqrt(2.0), portable=STABLE,
                          bounds=(0.0, math.sqrt(2.0)))),
          settings=("seed", "eps", "landscape_images", "landscape_radius", "landscape_resolution"), sharded=True)
def landscape_group(ctx: Context) -> dict[str, Result]:
    """Energy landscapes E(x + a d1 + b d2, y) around test images: contour figures and summaries."""
    import torch

    from bench.engines import plots
    from bench.engines.landscape_grid import energy_grid, grid_coords, landscape_summary, random_directions
    from bench.runtime import fastpath

    s = ctx.settings
    radius = float(settings.value(s, "landscape_radius"))
    res_n = int(s["landscape_resolution"])
    split = ctx.data.test.subset(int(s["landscape_images"]))
    x, y = split.x, split.y
    n = len(x)
    if n == 0:
        return {m: Result.missing("no test images") for m in
                ("landscape_flatness", "landscape_center_is_min", "landscape_min_offset")}
    dirs = random_directions(n, x.shape[1:], ctx.generator("landscape"))
    coords = grid_coords(radius, res_n)
    with fastpath.without_amp(ctx.model), torch.no_grad():  # float32: see bench.runtime.fastpath
        grid = energy_grid(ctx.model, x, y, dirs, coords, ctx.execution)
        centre = ctx.model.energy_joint(x.to(ctx.device), y.to(ctx.device)).cpu()
    summ = landscape_summary(grid, centre, coords, radius)

    titles = [f"test #{i} (y={int(y[i])}), E(x,y)={centre[i]:.3g}" for i in range(n)]
    files = []
    for i in range(n):
        fig = ctx.figure(f"landscape_{i}.png")
        p = fig.path
        plots.energy_contour(grid[i], coords, p, x[i], titles[i], model=fig.model)
        files.append(fig.rel)
    every = ctx.figure("landscape.png")
    plots.energy_contours(grid, coords, every.path, x, titles,
                          title=f"E(x + a d1 + b d2, y), |a|, |b| <= {radius:.3g} (L-inf unit directions)",
                          model=every.model)
    files.append(every.rel)

    common = {"radius": radius, "resolution": res_n, "images": n, "figures": files,
              "directions": "Gaussian, each scaled to unit L-inf norm; no clamping to [0, 1]",
              "per_image": {"centre_energy": centre.tolist(), "grid_mean": grid.flatten(1).mean(1).tolist(),
                            "grid_min": summ["min_energy"].tolist(),
                            "grid_max": grid.flatten(1).max(1).values.tolist(),
                            "min_alpha": summ["min_alpha"].tolist(), "min_beta": summ["min_beta"].tolist()}}
    out = {}
    v, se, sd = mean_se(summ["flatness"])
    out["landscape_flatness"] = Result(v, se, n, details={
        **common, "sd": sd, "meaning": "mean over images of (mean grid energy - E(x, y))",
        "std": "standard error over images, sd / sqrt(n)"})
    p = summ["center_is_min"].double().mean().item()
    out["landscape_center_is_min"] = Result(p, proportion_se(p, n), n, details={
        "meaning": "fraction of images whose own energy is the lowest on the grid",
        "std": "standard error of the proportion, sqrt(p(1-p)/n)",
        "per_image": summ["center_is_min"].tolist()})
    v, se, sd = mean_se(summ["min_offset"])
    out["landscape_min_offset"] = Result(v, se, n, details={
        "meaning": "mean over images of the distance of the grid minimum from the image, in radii",
        "sd": sd, "std": "standard error over images, sd / sqrt(n)",
        "per_image": summ["min_offset"].tolist()})
    return out
