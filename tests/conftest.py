import os
from functools import lru_cache

import pytest
import torch
import torch.nn.functional as F

from bench.core.energy import EnergyModel
from bench.inputs import data, nets

# one thread per pytest-xdist worker (tox runs two): two workers of two threads would each wait on the other
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def digits():
    return data.load("digits")


def tiny_model(num_classes=10, in_channels=1, shape=(1, 8, 8), act="silu", seed=0, width=4):
    torch.manual_seed(seed)
    net = nets.build("digits-cnn", num_classes, in_channels, width=width, act=act)
    return EnergyModel(net, 0.5, 0.5, shape, num_classes).eval()


@pytest.fixture(autouse=True)
def _no_probe_cache(monkeypatch):
    """Each test times its own plan probe (or mocks it): no entry of another test, another xdist
    worker or the user's own runs serves it (tests/test_plan.py switches the cache on for its test)."""
    from bench.pipeline import probe_cache

    monkeypatch.setattr(probe_cache, "ENABLED", False)


@pytest.fixture(autouse=True)
def _untimed_plan(request, monkeypatch):
    """The plan's timing probe (the model's passes at growing batches, the FID extractor with its
    network's load, a figure, SSIM: 1-3 s of a tiny in-process run) is timed only in tests marked
    ``timed_plan``; elsewhere every unit time is 0 and the plan prints estimates of 0 s."""
    if request.node.get_closest_marker("timed_plan"):
        return
    from bench.pipeline import plan

    monkeypatch.setattr(plan, "probe", lambda model, ds, s, device, kinds: plan.Probe())
    monkeypatch.setattr(plan, "_figure_unit", lambda x: (0.0, 0.0))
    monkeypatch.setattr(plan, "_chart_unit", lambda: (0.0, 0.0))
    monkeypatch.setattr(plan, "_ssim_unit", lambda x, device: 0.0)
    monkeypatch.setattr(plan, "_stats_unit", lambda: 0.0)
    monkeypatch.setattr(plan, "_extractor_unit", lambda x, ext, device: (0.0, 0.0))


@pytest.fixture
def model():
    return tiny_model()


@lru_cache(maxsize=1)
def trained_model() -> EnergyModel:
    """digits-cnn width 4, 15 epochs of plain training (about 0.6 s, about 93 % test accuracy);
    built once per session and shared: callers must not train it further."""
    ds = data.load("digits")
    m = tiny_model(width=4).train()
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(15):
        perm = torch.randperm(len(ds.train), generator=g)
        for i in range(0, len(perm), 64):
            b = perm[i:i + 64]
            loss = F.cross_entropy(m.logits(ds.train.x[b]), ds.train.y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return m.eval().requires_grad_(False)


@pytest.fixture
def one_thread():
    """Tiny models: one thread is fastest, and it keeps timings sane on a shared, busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def one_thread_own_cache(one_thread, monkeypatch, tmp_path):
    """One thread, and a ``$JEAT_BENCH_CACHE`` of the test's own: no cache entry of another test
    (or of the user) serves a run that a fault test means to compute."""
    monkeypatch.setenv("JEAT_BENCH_CACHE", str(tmp_path / "jeat-cache"))
    yield


@pytest.fixture
def fid_cache_one_thread(tmp_path, monkeypatch):
    """An empty FID reference cache of the test's own, and one torch thread (restored after)."""
    monkeypatch.setenv("JEAT_BENCH_CACHE", str(tmp_path / "jeat-cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fashion_mnist_or_skip() -> None:
    """Debian's dataset-fashion-mnist must be installed for the test that calls this: in CI (``CI``
    set; .ci/run installs it) its absence fails the test, elsewhere it skips it with the reason."""
    from bench.inputs import fashion_mnist as fm

    if not all(fm.idx_file(fm.FASHION_MNIST_DEBIAN, f) for f in fm.FASHION_MNIST_FILES):
        if os.environ.get("CI"):
            pytest.fail("CI must have Debian's dataset-fashion-mnist (.ci/run installs it)")
        pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")


@pytest.fixture
def use_groups(monkeypatch):
    """use_groups(groups): the runner sees only these metric groups (fast stand-ins) for one test."""
    def use(groups):
        monkeypatch.setattr("bench.metrics.registry.load_all", lambda: groups)
        return groups

    return use


@pytest.fixture
def figures_not_rendered(monkeypatch):
    """bench.engines.plots.save writes no PNG (returns the path it would write): for end-to-end tests
    that read no figure, where matplotlib's rendering is a good part of a tiny run.  The groups
    still compute and draw their figures' data."""
    from pathlib import Path

    from bench.engines import plots

    monkeypatch.setattr(plots, "save", lambda fig, path, model="": Path(path))
