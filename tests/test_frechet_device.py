"""FD-infinity's Frechet distances in torch float64 on the run's device (``frechet_torch``), against
torch-fidelity's numpy distance (``frechet``, the suite's until now) to 1e-6 relative, and on the
CPU the numbers as before, bit for bit."""

import numpy as np
import pytest
import torch

from bench.engines.frechet import RefOnDevice, fd_infinity, frechet, frechet_torch
from bench.engines.sample_quality import TF_SEED, fd_infinity_result

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _sets(n: int, d: int, seed: int = 0):
    """Correlated features and reference statistics of another, shifted and anisotropic, set."""
    g = np.random.default_rng(seed)
    mix = g.normal(size=(d, d)) / np.sqrt(d)
    x = g.normal(size=(n, d)) @ mix + 0.1
    r = g.normal(size=(3 * d, d)) @ (mix * g.uniform(0.2, 2.0, size=d))
    return x, r.mean(0), np.cov(r, rowvar=False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("n", "d"), [(300, 48), (40, 48), (48, 48)])  # more points than dimensions, fewer, equal
def test_frechet_torch_equals_torch_fidelity(device, n, d):
    x, mu, sigma = _sets(n, d)
    want = frechet(x, mu, sigma)  # torch-fidelity's fid_statistics_to_metric (n > d) or its low-rank form
    if n > d:
        from torch_fidelity.metric_fid import fid_statistics_to_metric

        stats = {"mu": x.mean(0), "sigma": np.cov(x, rowvar=False)}
        assert want == fid_statistics_to_metric(stats, {"mu": mu, "sigma": sigma}, False)["frechet_inception_distance"]
    got = frechet_torch(torch.as_tensor(x, device=device), RefOnDevice(mu, sigma, device))
    assert want > 1 and got == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_fd_infinity_on_a_device_equals_numpy(device):
    x, mu, sigma = _sets(120, 32, seed=1)  # sizes 24 to 120: both forms of the distance
    want = fd_infinity(x, mu, sigma, seed=TF_SEED)
    got = fd_infinity(x, mu, sigma, seed=TF_SEED, device=device)
    assert got["sizes"] == want["sizes"] and min(want["sizes"]) < 32 < max(want["sizes"])
    np.testing.assert_allclose(got["fd"], want["fd"], rtol=1e-6)
    assert got["value"] == pytest.approx(want["value"], rel=1e-6)
    assert got["slope"] == pytest.approx(want["slope"], rel=1e-6)


def test_a_cpu_run_keeps_the_numpy_distances():
    x, mu, sigma = _sets(60, 16, seed=2)
    r = fd_infinity_result(torch.as_tensor(x, dtype=torch.float32), {"mu": mu, "sigma": sigma}, 60, {}, "cpu")
    want = fd_infinity(torch.as_tensor(x, dtype=torch.float32), mu, sigma, seed=TF_SEED)
    assert r.value == want["value"] and r.details["fd_infinity"]["fd"] == want["fd"]
