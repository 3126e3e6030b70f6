"""Suite ``memorization``: SSIM nearest neighbours of generated images in the training set (paper Fig. 7;
the batched SSIM kernel is ``bench.engines.ssim``).

Metric ``ssim_nn``: the mean over generated images of the SSIM to their nearest training image
(over all of the training split); ``std`` is the standard error of that mean (sd / sqrt(n));
details hold the median, maximum, the fraction above 0.9 and the mean SSIM to the k-th neighbour.
The figure ``figures/ssim_neighbours.png`` shows, for ``ssim_n_show`` generated images (classes
taken in turn), the image and its ``ssim_k`` nearest training images with their SSIM (Fig. 7).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.core import cost
from bench.core.settings import GEN_SETTINGS
from bench.core.stats import mean_se
from bench.metrics import DRIFTING, Metric, Result, absolute, register

if TYPE_CHECKING:
    import torch

    from bench.metrics.context import Context

STD_NOTE = "standard error of the mean over generated images, sd / sqrt(n)"
GRID = "samples/grid.png"  # the generated set's grid (bench.engines.generation.generated), relative to the run's folder


def ssim_cost(s, z: cost.Sizes) -> cost.Work:
    """Every generated image against every training image; the neighbours figure."""
    n_show = int(s.get("ssim_n_show") or 0)
    return (cost.images("ssim", int(s.get("n_gen") or 0) * z.n_train)
            + cost.figures(1 if n_show else 0, n_show * (int(s["ssim_k"]) + 1)))


@register("ssim_nn", "memorization", cost=ssim_cost, metrics=(Metric("ssim_nn", "ssim", column="SSIM NN", tolerance=absolute(0.02), range=2.0, portable=DRIFTING,
                                        bounds=(-1.0, 1.0)),),
          settings=(*GEN_SETTINGS, "ssim_k", "ssim_n_show"), sharded=True, needs=("generated",))
def ssim_group(ctx: Context) -> dict[str, Result]:
    """SSIM of each generated image to its nearest training image (whole training split), and the
    Fig. 7 neighbour grid."""
    import torch

    from bench.engines import plots
    from bench.engines.ssim import show_order
    from bench.inputs.data import TRAIN_IS_TEST

    s = ctx.settings
    if ctx.data.train_is_test:  # the nearest "training" images would be the evaluated images themselves
        return {"ssim_nn": Result.missing(f"refused: {TRAIN_IS_TEST}")}
    gen = ctx.generation
    gx, gy = gen.x, gen.y
    gx = gx.detach().cpu()
    finite = torch.isfinite(gx.flatten(1)).all(1)
    if not finite.any():
        return {"ssim_nn": Result.missing("no finite generated images", n=len(gx), grid=GRID)}
    gx, gy = gx[finite], gy.cpu()[finite]
    train = ctx.data.train.x
    res, vals, idx = ssim_nn_result(gx, train, int(s["ssim_k"]), ctx.execution)  # torchrun: a share each
    res.details.update(dropped_nonfinite=int((~finite).sum()), grid=GRID)  # grid: the report finds it here
    if vals is None:
        return {"ssim_nn": res}
    details = res.details
    n_show = int(s.get("ssim_n_show") or 0)
    if n_show > 0:
        rows = show_order(gy, n_show)
        fig = ctx.figure("ssim_neighbours.png")
        path = fig.path
        plots.ssim_neighbours_grid(gx[rows], train[idx[rows]], vals[rows], path,
                                   title=f"Generated images (left) and their {vals.shape[1]} nearest training "
                                         f"images by SSIM ({ctx.data.name})", model=fig.model)
        details["figure"] = fig.rel
        details["shown"] = {"generated": rows, "neighbours": idx[rows].tolist(),
                            "ssim": [[round(v, 5) for v in r] for r in vals[rows].tolist()]}
    return {"ssim_nn": res}


def ssim_nn_result(gx: torch.Tensor, train: torch.Tensor, k: int, run) -> tuple[Result, torch.Tensor | None,
                                                                              torch.Tensor | None]:
    """``ssim_nn`` of the images ``gx`` among ``train`` (the one builder: the memorization group and
    ``bench samples``): the Result with its details, and the (n, k) SSIMs and indices of the k
    nearest training images (None, None with a null Result when the images are below the SSIM
    window).  ``run`` is the ``Execution`` (device, batch size, sharding)."""
    from bench.engines.ssim import WIN, nearest_neighbours

    if min(train.shape[-2:]) < WIN:
        return (Result.missing(f"SSIM needs images of at least {WIN}x{WIN} (win_size {WIN}); "
                               f"these are {tuple(train.shape[-2:])}", n=len(gx)), None, None)
    vals, idx = nearest_neighbours(gx, train, k, run=run)  # it caps k at the training set
    nn = vals[:, 0].double()
    mean, se, sd = mean_se(nn)
    details = {
        "median": nn.median().item(),
        "max": nn.max().item(),
        "min": nn.min().item(),
        "frac_above_0.9": (nn > 0.9).double().mean().item(),
        "mean_kth": vals[:, -1].double().mean().item(),
        "k": int(vals.shape[1]),
        "n_train": len(train),
        "sd": sd,
        "std": STD_NOTE,
        "ssim": {"win_size": WIN, "data_range": 1.0, "gaussian_weights": False, "use_sample_covariance": True},
    }
    return Result(mean, se, len(nn), details=details), vals, idx
