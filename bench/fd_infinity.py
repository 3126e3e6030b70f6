"""The Frechet distance at several sample sizes and its bias-corrected limit (FID-infinity, Chong
and Forsyth 2020, "Effectively Unbiased FID and Inception Score and where to find them").

The Frechet distance of n samples to a reference is biased upward, by about c / n (the sample
mean alone adds tr(Sigma) / n).  ``fd_infinity`` computes the distance of random subsets of
sizes N_1 < ... < N_k = n (one subset per size, drawn without replacement from one seeded
permutation, as Chong and Forsyth do; the last is the whole set), fits FD(N) = slope / N +
intercept by least squares and reports the intercept, the distance extrapolated to 1/N = 0,
with the sizes, the distances and the slope (how strongly the distance depends on n).

The distance itself is torch-fidelity's ``fid_statistics_to_metric`` (the suite's FID), except
where a subset has fewer points than dimensions (Inception's 2048 against a few hundred
generated images): there the covariance of the subset is A^T A / (N - 1), A its centred
features, and tr sqrt(Sigma_A Sigma_ref) is the sum of the square roots of the eigenvalues of
the N x N matrix A Sigma_ref A^T / (N - 1), which shares its non-zero eigenvalues with
Sigma_A Sigma_ref: the same number, from an N x N symmetric eigenproblem instead of a d x d
general one (``frechet``; tests/test_fd_infinity.py checks both against each other and against
the closed form on Gaussians).
"""

from __future__ import annotations

import numpy as np
import torch

FD_INF_POINTS = 15  # subset sizes of the fit (Chong and Forsyth use 15)
FD_INF_SMALLEST = 0.2  # the smallest subset, as a share of n (theirs: 5,000 of 50,000)
FD_INF_SEED = 2020
FD_INF_MIN_N = 10  # below this many samples there is no fit to make


def frechet(x: torch.Tensor | np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray) -> float:
    """Frechet distance between the Gaussian fitted to the rows of x (N, d) (mean, unbiased
    covariance, as torch-fidelity's ``fid_features_to_statistics``) and N(mu_ref, sigma_ref)."""
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    a = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    mu_ref, sigma_ref = np.asarray(mu_ref, np.float64), np.asarray(sigma_ref, np.float64)
    n, d = a.shape
    mu = a.mean(0)
    if n > d:
        stats = {"mu": mu, "sigma": np.cov(a, rowvar=False)}
        return float(fid_statistics_to_metric(stats, {"mu": mu_ref, "sigma": sigma_ref}, False)
                     ["frechet_inception_distance"])
    c = a - mu
    small = c @ sigma_ref @ c.T / (n - 1)
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((small + small.T) / 2), 0, None)).sum()
    diff = mu - mu_ref
    return float(diff @ diff + (c * c).sum() / (n - 1) + np.trace(sigma_ref) - 2 * tr_covmean)


def subset_sizes(n: int, points: int = FD_INF_POINTS, smallest: float = FD_INF_SMALLEST) -> list[int]:
    """``points`` sizes evenly spaced from ``smallest`` x n (at least 2) to n, distinct."""
    lo = max(2, int(round(smallest * n)))
    return sorted({int(round(v)) for v in np.linspace(lo, n, points)})


def fd_infinity(x: torch.Tensor, mu_ref: np.ndarray, sigma_ref: np.ndarray, sizes: list[int] | None = None,
                seed: int = FD_INF_SEED) -> dict:
    """-> {'value' (the intercept: FD at 1/N = 0), 'slope' (d FD / d (1/N)), 'sizes', 'fd' (the
    distance at each size), 'fd_n' (at the whole set), 'seed'} for the features x (N, d) against
    N(mu_ref, sigma_ref); None values with 'reason' below ``FD_INF_MIN_N`` points."""
    n = len(x)
    if n < FD_INF_MIN_N:
        return {"value": None, "slope": None, "reason": f"FD-infinity needs {FD_INF_MIN_N} samples; got {n}"}
    sizes = sizes or subset_sizes(n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    x = x.detach().cpu().double()[perm]
    fds = [frechet(x[:m], mu_ref, sigma_ref) for m in sizes]
    slope, intercept = np.polyfit(1.0 / np.asarray(sizes, np.float64), np.asarray(fds), 1)
    return {"value": float(intercept), "slope": float(slope), "sizes": list(sizes),
            "fd": [float(v) for v in fds], "fd_n": fds[-1] if sizes[-1] == n else None, "seed": seed,
            "fit": "least squares FD(N) = slope / N + value over one nested random subset per size "
                   "(Chong and Forsyth 2020)"}
