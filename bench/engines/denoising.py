"""Denoising on tensors: Gaussian noise on images, Langevin chains on E(x, y) from the noisy images
(``bench.engines.sampling``) and the PSNR of images against references.  ``bench.metrics.denoise``
(the Fig. 15 group, which documents them; its chains over the points are
``bench.metrics.group_points.langevin_chains``) and ``bench.functional.psnr`` call them."""

from __future__ import annotations

import math

import torch

from bench.core.energy import EnergyModel, evaluates
from bench.engines.sampling import SGLDConfig, sgld


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB, 10 log10(data_range^2 / MSE), images (N, ...) -> (N,) (float64);
    identical images give inf."""
    mse = (x.double() - ref.double()).flatten(1).pow(2).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def add_noise(x: torch.Tensor, var: float, generator: torch.Generator | None = None,
              clamp: bool = True) -> torch.Tensor:
    """x + N(0, var I), clamped to [0, 1] unless ``clamp`` is False."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    y = x + math.sqrt(var) * noise
    return y.clamp(0, 1) if clamp else y


@evaluates
def langevin_denoise(model: EnergyModel, x_noisy: torch.Tensor, y: torch.Tensor, steps, step_size: float,
                     noise: float, generator: torch.Generator | None = None) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """One Langevin chain per image on E(x, y) from ``x_noisy``; -> ({count: images after count
    steps} for every count in ``steps``, finite mask).  A count of 0 is the noisy image itself."""
    counts = sorted({int(s) for s in steps})
    if not counts or counts[0] < 0:
        raise ValueError(f"denoise step counts must be non-negative integers, got {list(steps)}")
    snaps = {0: x_noisy.detach().clone()} if 0 in counts else {}

    def keep(t, x, e, g):
        if t + 1 in counts:
            snaps[t + 1] = x.detach().clone()

    cfg = SGLDConfig(steps=counts[-1], step_size=step_size, noise=noise, energy="joint", clamp=True)
    _, finite = sgld(model, x_noisy, y, cfg, generator, callback=keep)
    return {c: snaps[c] for c in counts}, finite
