"""Denoising by Langevin descent on the joint energy (suite ``denoise``; paper App. G.1, Fig. 14, 15).

The first ``denoise_images`` test images x get Gaussian noise of mean 0 and variance
``denoise_var`` (0.3 as in the paper: standard deviation sqrt(0.3) ~ 0.55), drawn for all images at
once from the group's own generator (so the noisy images depend on the seed and the noise only); the noisy images are clamped to [0, 1], the model's input domain, and that clamped
image is "the noisy image" everywhere below (its PSNR and SSIM included).  From it, Langevin
dynamics on E(x, y) (``bench.engines.sampling.sgld``, Eq. 10:
x <- clamp(x - step/2 grad E(x, y) + noise N(0, I), 0, 1), step ``denoise_step_size``, noise
``denoise_noise``; 0 is plain gradient descent) runs one chain per image; its state after each
count of ``denoise_steps`` (10 and 50) is the denoised image at that count.

The label y of the energy (``denoise_label``): ``predicted`` (default) is the model's own
prediction on the noisy image, argmax_y f(x_noisy)[y], fixed for the whole chain, so the
denoiser uses nothing a real denoiser would not have; ``oracle`` is the image's ground-truth
label (the paper's App. G.1 reading, which hands the model the answer).  ``details['label']``
names the one used and ``details['label_accuracy']`` is the share of noisy images whose
predicted label is the true one (1 for ``oracle``).

Metrics, all against the clean image, data range 1:

``denoise_psnr_noisy``   PSNR of the noisy images, 10 log10(1 / MSE) per image, mean over images
``denoise_psnr``         PSNR of the denoised images after the largest step count (every count in
                         ``details['by_steps']``)
``denoise_ssim_noisy``   SSIM (scikit-image's, see ``bench.engines.ssim``) of the noisy images
``denoise_ssim``         SSIM of the denoised images after the largest step count

PSNR is averaged per image (the mean of per-image PSNR, as is usual for denoising benchmarks);
``details['psnr_of_mean_mse']`` gives 10 log10(1 / mean MSE) as well.  ``std`` is the standard
error over images, sd / sqrt(n).  With ``denoise_noise > 0`` the Langevin noise is drawn from a
stream of its own per batch (seeded by the batch's index, so torchrun ranks, each denoising its
share of the batches, draw what one process draws), and the denoised numbers then depend on
``batch_size`` (declared).  Figure ``figures/denoise.png``:
original | noisy | denoised after each step count (Fig. 15), for up to 8 images, classes in turn.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from bench.core import cost, outcomes
from bench.core.stats import mean_se
from bench.metrics import STABLE, Metric, Result, absolute, register

if TYPE_CHECKING:
    from bench.metrics.context import Context

STD_NOTE = "standard error over images, sd / sqrt(n)"
PSNR_OF = "PSNR (dB) per image in order"
N_SHOW = 8
LABELS = {"predicted": "predicted: argmax_y f(x_noisy)[y], the model's label for the noisy image",
          "oracle": "oracle: the image's ground-truth label y"}


def denoise_cost(s, z: cost.Sizes) -> cost.Work:
    """One Langevin chain per image up to the largest step count (forward+backward per step), and
    the predicted label's forward."""
    n = cost.count(s, "denoise_images", z.n_test)
    steps = s["denoise_steps"]
    steps = max(steps) if isinstance(steps, list | tuple) else int(steps)
    counts = len(s["denoise_steps"]) if isinstance(s["denoise_steps"], list | tuple) else 1
    return (cost.passes("backward", n, cost.batch(s), steps) + cost.passes("forward", n, cost.batch(s))
            + cost.figures(1, min(n, N_SHOW) * (2 + counts)))


@register("denoise", "denoise", cost=denoise_cost,
          metrics=(Metric("denoise_psnr_noisy", "dB", True, column="PSNR noisy", tolerance=absolute(0.5), portable=STABLE),
                   Metric("denoise_psnr", "dB", True, column="PSNR", tolerance=absolute(0.5), portable=STABLE),
                   Metric("denoise_ssim_noisy", "ssim", True, column="SSIM noisy", tolerance=absolute(0.02), range=2.0, portable=STABLE,
                          bounds=(-1.0, 1.0)),
                   Metric("denoise_ssim", "ssim", True, column="SSIM", tolerance=absolute(0.02), range=2.0, portable=STABLE,
                          bounds=(-1.0, 1.0))),
          settings=("seed", "denoise_images", "denoise_var", "denoise_steps", "denoise_step_size",
                    "denoise_noise", "denoise_label", "batch_size"), sharded=True)
def denoise_group(ctx: Context) -> dict[str, Result]:
    """Gaussian noise (variance ``denoise_var``) on test images, Langevin descent on E(x, y) with
    y the predicted (or, ``denoise_label`` oracle, the true) label; PSNR and SSIM before and after
    ``denoise_steps`` steps, and the Fig. 15 grid."""
    from bench.engines import plots
    from bench.engines.denoising import add_noise
    from bench.engines.ssim import show_order
    from bench.metrics.group_points import langevin_chains

    s = ctx.settings
    label = s.get("denoise_label") or "predicted"  # bench.core.settings.validate checked it
    split = ctx.data.test.subset(int(s["denoise_images"]))
    counts = sorted({int(c) for c in (s["denoise_steps"] if isinstance(s["denoise_steps"], list | tuple)
                                      else [s["denoise_steps"]])})
    # the noisy images: all at once from their own stream (independent of the batch size and of
    # the Langevin settings); the chains draw from another
    g_noise = ctx.generator("denoise/noise")
    noisy = add_noise(split.x.to(g_noise.device), float(s["denoise_var"]), g_noise).cpu()
    den, finite, used = langevin_chains(ctx, noisy, split.y, counts, label)
    clean = split.x
    common = {"noise_var": float(s["denoise_var"]), "noise_clamped": True, "label": LABELS[label],
              "label_setting": label, "label_accuracy": (used == split.y).double().mean().item(),
              "langevin": {"steps": counts, "step_size": float(s["denoise_step_size"]),
                           "noise": float(s["denoise_noise"] or 0.0), "energy": "joint", "clamp": True},
              "diverged_chains": int((~finite).sum()), "std": STD_NOTE}
    rows = show_order(split.y, N_SHOW)
    cols = [("original", clean[rows]), ("noisy", noisy[rows])] + [(f"{c} steps", den[c][rows]) for c in counts]
    fig = ctx.figure("denoise.png")
    plots.image_columns(cols, fig.path,
                        title=f"Langevin denoising on E(x, y), noise variance {float(s['denoise_var']):g}",
                        row_labels=[f"y={int(split.y[r])}" for r in rows], model=fig.model)
    common["figure"] = fig.rel
    return _results(clean, noisy, den, counts, common)


def _results(clean, noisy, den: dict, counts: list[int], common: dict) -> dict[str, Result]:
    """PSNR and SSIM of the noisy and the denoised images against the clean ones."""
    from bench.engines.denoising import psnr
    from bench.engines.ssim import WIN, ssim

    n, last = len(clean), counts[-1]

    def mse_psnr(a):
        return 10 * math.log10(1.0 / (a.double() - clean.double()).pow(2).mean().item())

    ssim_ok = min(clean.shape[-2:]) >= WIN

    def ssimmean_se(a):
        return mean_se(ssim(a, clean).double()) if ssim_ok else (None, None, None)

    by_steps = {}
    for c in counts:
        pv, pse, _ = mean_se(psnr(den[c], clean))
        sv, sse, _ = ssimmean_se(den[c])
        by_steps[str(c)] = {"psnr": pv, "psnr_se": pse, "ssim": sv, "ssim_se": sse,
                            "psnr_of_mean_mse": mse_psnr(den[c])}
    out = {}
    per = psnr(noisy, clean)
    v, se, sd = mean_se(per)
    out["denoise_psnr_noisy"] = Result(v, se, n, details={**common, "sd": sd, "psnr_of_mean_mse": mse_psnr(noisy),
                                                         outcomes.VALUES_KEY: outcomes.pack_values(per, PSNR_OF)})
    per = psnr(den[last], clean)
    v, se, sd = mean_se(per)
    out["denoise_psnr"] = Result(v, se, n, details={**common, "sd": sd, "steps": last, "by_steps": by_steps,
                                                   "psnr_of_mean_mse": mse_psnr(den[last]),
                                                   outcomes.VALUES_KEY: outcomes.pack_values(per, PSNR_OF)})
    if not ssim_ok:
        why = f"SSIM needs images of at least {WIN}x{WIN} (win_size {WIN}); these are {tuple(clean.shape[-2:])}"
        out["denoise_ssim_noisy"] = Result.missing(why, n)
        out["denoise_ssim"] = Result.missing(why, n)
        return out
    v, se, sd = ssimmean_se(noisy)
    out["denoise_ssim_noisy"] = Result(v, se, n, details={"sd": sd, "std": STD_NOTE})
    v, se, sd = ssimmean_se(den[last])
    out["denoise_ssim"] = Result(v, se, n, details={"sd": sd, "std": STD_NOTE, "steps": last,
                                                   "label": common["label"], "label_setting": common["label_setting"],
                                                   "by_steps": {k: {"ssim": d["ssim"], "ssim_se": d["ssim_se"]}
                                                                for k, d in by_steps.items()}})
    return out
