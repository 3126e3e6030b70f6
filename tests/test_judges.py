"""The judge engines against independent references: density/coverage against the authors' prdc,
the low-rank Frechet distance against torch-fidelity's, FD-infinity against the closed form."""

import numpy as np
import pytest
import torch

from bench.engines.density_coverage import density_coverage
from bench.engines.frechet import frechet


def test_density_coverage_match_prdc():
    prdc = pytest.importorskip("prdc")
    g = np.random.default_rng(0)
    real, fake = g.normal(size=(300, 6)), g.normal(0.3, 1.2, size=(200, 6))
    want = prdc.compute_prdc(real, fake, nearest_k=5)
    got = density_coverage(torch.from_numpy(real), torch.from_numpy(fake), block=64)
    assert got["density"] == pytest.approx(want["density"], abs=1e-12)
    assert got["coverage"] == pytest.approx(want["coverage"], abs=1e-12)


def test_low_rank_frechet_equals_torch_fidelity():
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    g = np.random.default_rng(1)
    x, r = g.normal(size=(20, 40)), g.normal(size=(500, 40))
    mu, sig = r.mean(0), np.cov(r, rowvar=False)
    want = fid_statistics_to_metric({"mu": x.mean(0), "sigma": np.cov(x, rowvar=False)}, {"mu": mu, "sigma": sig},
                                    False)["frechet_inception_distance"]
    assert frechet(x, mu, sig) == pytest.approx(want, rel=1e-6)


def test_fd_infinity_removes_the_small_sample_bias():
    """On Gaussians with a known distance (closed form), FD-infinity's mean over replications is
    far closer to the truth than the plain distance of the same sets (measured: plain bias 0.25,
    FD-infinity's -0.006 with a standard error of 0.015, at d = 16, n = 400)."""
    from scipy.linalg import sqrtm

    from bench.engines.frechet import fd_infinity, frechet

    d, n, reps = 16, 400, 30
    s1 = np.diag(np.linspace(0.5, 2.0, d))
    true = float(np.trace(s1 + np.eye(d) - 2 * sqrtm(s1).real))  # N(0, s1) against N(0, I)
    plain, inf = [], []
    for r in range(reps):
        x = np.random.default_rng(100 + r).multivariate_normal(np.zeros(d), s1, size=n)
        got = fd_infinity(x, np.zeros(d), np.eye(d), seed=r)
        assert got["sizes"][-1] == n and got["fd"][-1] == pytest.approx(frechet(x, np.zeros(d), np.eye(d)))
        plain.append(got["fd"][-1])
        inf.append(got["value"])
    bias_plain, bias_inf = np.mean(plain) - true, np.mean(inf) - true
    assert bias_plain > 0.15  # the bias the estimate is there to remove
    assert abs(bias_inf) < 0.3 * bias_plain


def test_fd_infinity_refuses_too_few_points():
    from bench.engines.frechet import fd_infinity

    got = fd_infinity(np.zeros((5, 3)), np.zeros(3), np.eye(3), seed=0)
    assert got["value"] is None and "needs 20 samples; got 5" in got["reason"]
