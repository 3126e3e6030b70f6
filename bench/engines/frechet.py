"""The Frechet distance of a feature set to reference statistics, also where the set has fewer
points than dimensions (Inception's 2048 against a few hundred generated images).

The distance is torch-fidelity's ``fid_statistics_to_metric`` (the suite's FID), except where the
set has fewer points than dimensions: there its covariance is A^T A / (N - 1), A its centred
features, and tr sqrt(Sigma_A Sigma_ref) is the sum of the square roots of the eigenvalues of the
N x N matrix A Sigma_ref A^T / (N - 1), which shares its non-zero eigenvalues with
Sigma_A Sigma_ref: the same number, from an N x N symmetric eigenproblem instead of a d x d
general one (tests/test_judges.py checks it against torch-fidelity's).
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
