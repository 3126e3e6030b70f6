"""The Frechet distance of a feature set to reference statistics, also where the set has fewer
points than dimensions (Inception's 2048 against a few hundred generated images).

The distance is torch-fidelity's ``fid_statistics_to_metric`` (the suite's FID), except where the
set has fewer points than dimensions: there its covariance is A^T A / (N - 1), A its centred
features, and tr sqrt(Sigma_A Sigma_ref) is the sum of the square roots of the eigenvalues of the
N x N matrix A Sigma_ref A^T / (N - 1), which shares its non-zero eigenvalues with
Sigma_A Sigma_ref: the same number, from an N x N symmetric eigenproblem instead of a d x d
general one (tests/test_judges.py checks it against torch-fidelity's).

``frechet_torch`` is the same distance in torch float64 on any device, for FD-infinity's many
distances in a GPU run: tr sqrt(Sigma Sigma_ref) is the sum of the square roots of the eigenvalues
of the symmetric R Sigma R, R = Sigma_ref^(1/2) (similar to Sigma Sigma_ref), or of the N x N form
above; it equals ``frechet`` to 1e-6 relative (tests/test_frechet_device.py), not bit for bit, so
a CPU run keeps ``frechet`` and its numbers.
"""

from __future__ import annotations

import numpy as np
import torch


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


class RefOnDevice:
    """Reference statistics in float64 on a device, with Sigma_ref^(1/2) (symmetric, from its
    eigendecomposition, eigenvalues clipped at 0), made once for many ``frechet_torch`` calls."""

    def __init__(self, mu_ref, sigma_ref, device: torch.device | str):
        self.mu = torch.as_tensor(np.asarray(mu_ref, np.float64), device=device)
        self.sigma = torch.as_tensor(np.asarray(sigma_ref, np.float64), device=device)
        w, v = torch.linalg.eigh(self.sigma)
        self.sqrt = (v * w.clamp_min(0).sqrt()) @ v.T
        self.trace = torch.trace(self.sigma)


def frechet_torch(a: torch.Tensor, ref: RefOnDevice) -> float:
    """``frechet`` of the rows of a (N, d), float64 on ``ref``'s device."""
    n, d = a.shape
    mu = a.mean(0)
    c = a - mu
    if n > d:  # Sigma = C^T C / (N - 1); R Sigma R = (C R)^T (C R) / (N - 1)
        cr = c @ ref.sqrt
        sym = cr.T @ cr / (n - 1)
    else:
        sym = c @ ref.sigma @ c.T / (n - 1)
    tr_covmean = torch.linalg.eigvalsh((sym + sym.T) / 2).clamp_min(0).sqrt().sum()
    diff = mu - ref.mu
    return float(diff @ diff + (c * c).sum() / (n - 1) + ref.trace - 2 * tr_covmean)


FD_INF_POINTS = 10  # subset sizes of the fit (Chong and Forsyth use 15, from 5,000 to 50,000)
FD_INF_SMALLEST = 0.2  # the smallest subset as a share of the set (theirs: a tenth)
FD_INF_DRAWS = 4  # independent random subsets averaged at each size below the whole set
FD_INF_MIN_N = 20  # below this many points there is no fit to make


def fd_infinity_cost(n: int, dims: int):
    """``fd_infinity``'s work as ``bench.core.cost`` counts it: the float64 multiply-adds of its
    distances (``draws`` subsets at each size below n, the whole set once), each a covariance or
    its n x n form (m d^2 + m^2 d) and a decomposition of the smaller side (taken as 10 m^3), a
    float64 multiply-add counted as two float32 ones."""
    from bench.core import cost

    if n < FD_INF_MIN_N:
        return cost.Work()
    macs = 0.0
    for m in subset_sizes(n):
        k = min(m, dims)
        macs += (1 if m == n else FD_INF_DRAWS) * (m * dims * dims + k * k * max(m, dims) + 10 * k ** 3)
    return cost.images("stats", 2 * macs)


def subset_sizes(n: int, points: int = FD_INF_POINTS, smallest: float = FD_INF_SMALLEST) -> list[int]:
    """``points`` distinct sizes evenly spaced from ``smallest`` x n (at least 2) to n."""
    return sorted({int(round(v)) for v in np.linspace(max(2, round(smallest * n)), n, points)})


def fd_infinity(x: torch.Tensor | np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray, seed: int,
                points: int = FD_INF_POINTS, smallest: float = FD_INF_SMALLEST, draws: int = FD_INF_DRAWS,
                device: torch.device | str | None = None) -> dict:
    """The bias-corrected Frechet distance FD-infinity (Chong and Forsyth 2020, "Effectively
    unbiased FID and Inception Score and where to find them").

    The distance of N samples is biased upwards by about c / N (the sample mean alone adds
    tr(Sigma) / N). At each of ``points`` sizes N from ``smallest`` x n to n, the distance is
    averaged over ``draws`` random subsets drawn without replacement, each independently (the
    whole set at N = n); FD(N) = slope / N + value is fitted by least squares and ``value``, the
    distance extrapolated to 1/N = 0, is returned with the slope, the sizes and the distances.
    On Gaussians with a known distance this removes most of the bias (tests/test_judges.py).
    ``device``: the distances by ``frechet_torch`` on it (the same subsets); None: by ``frechet``."""
    a = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    n = len(a)
    if n < FD_INF_MIN_N:
        return {"value": None, "reason": f"FD-infinity needs {FD_INF_MIN_N} samples; got {n}"}
    if device is None:
        def distance(idx: np.ndarray) -> float:
            return frechet(a[idx], mu_ref, sigma_ref)
    else:
        ref, a_dev = RefOnDevice(mu_ref, sigma_ref, device), torch.as_tensor(a, device=device)

        def distance(idx: np.ndarray) -> float:
            return frechet_torch(a_dev[torch.as_tensor(idx, device=device)], ref)
    g = np.random.default_rng(seed)
    sizes = subset_sizes(n, points, smallest)
    fds = [float(np.mean([distance(g.choice(n, m, replace=False)) for _ in range(1 if m == n else draws)]))
           for m in sizes]
    slope, value = np.polyfit(1.0 / np.asarray(sizes, np.float64), np.asarray(fds), 1)
    return {"value": float(value), "slope": float(slope), "sizes": sizes, "fd": fds, "draws": draws,
            "seed": seed, "fit": "least squares FD(N) = slope / N + value (Chong and Forsyth 2020)"}
