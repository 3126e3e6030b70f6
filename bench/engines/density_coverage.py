"""Density and coverage (Naeem, Oh, Uh, Choi and Yoo 2020, "Reliable Fidelity and Diversity
Metrics for Generative Models"), batched torch on any device.

With real features X_1..X_N, fake Y_1..Y_M and r_i the distance from X_i to its k-th nearest
other real point:

    density  = 1 / (k M) sum_j sum_i 1[ ||Y_j - X_i|| < r_i ]      (fidelity; about 1 when the
               fakes follow the real distribution, above 1 where they crowd its dense parts)
    coverage = 1 / N sum_i 1[ min_j ||Y_j - X_i|| < r_i ]           (diversity, in [0, 1]; for
               equal-size sets from one distribution about 1 - 2^-k)

as the authors' ``prdc`` package computes them (strict inequalities, k = 5 by default; the test
checks against it).  Distances are taken in blocks of ``BLOCK`` rows (no N x N matrix in memory)
and in float64, without the matrix-product shortcut, so ties to the radius fall as prdc's do.
"""

from __future__ import annotations

import torch

NEAREST_K = 5  # Naeem et al.'s k
BLOCK = 1024


def _dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def knn_radii(x: torch.Tensor, k: int = NEAREST_K, block: int = BLOCK) -> torch.Tensor:
    """Distance of each row of x to its k-th nearest other row (itself excluded)."""
    if len(x) <= k:
        raise ValueError(f"the k-NN radius needs more than k = {k} points; got {len(x)}")
    return torch.cat([_dist(x[i:i + block], x).topk(k + 1, dim=1, largest=False).values[:, k]
                      for i in range(0, len(x), block)])


def density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = NEAREST_K,
                     device: torch.device | str | None = None, block: int = BLOCK) -> dict:
    """-> {'density', 'coverage', 'k', 'n_real', 'n_fake'} of the features real (N, d) and fake (M, d)."""
    dev = torch.device(device) if device is not None else real.device
    real, fake = real.to(dev, torch.float64), fake.to(dev, torch.float64)
    radii = knn_radii(real, k, block)
    inside = torch.zeros(len(real), dtype=torch.float64, device=dev)  # per real ball: fakes inside
    for j in range(0, len(fake), block):
        inside += (_dist(fake[j:j + block], real) < radii[None, :]).sum(0)
    density = float(inside.sum()) / (k * len(fake))
    coverage = float((inside > 0).double().mean())
    return {"density": density, "coverage": coverage, "k": k, "n_real": len(real), "n_fake": len(fake)}
