"""Fast paths (channels_last, bf16 autocast, torch.compile), each checked against the plain path."""

import shutil

import pytest
import torch

from bench.core.errors import BenchError
from bench.core.results import read as read_results
from bench.engines.attacks import pgd
from bench.engines.fisher_terms import fisher_scores
from bench.inputs import zoo
from bench.outputs import check
from bench.pipeline import runner
from bench.runtime import fastpath
from bench.runtime.execution import Execution
from tests.conftest import trained_model


@pytest.fixture
def fast_model(one_thread):
    """The shared trained model with a fast path set by the test; plain again afterwards (one torch
    thread: the digits model is too small for two, and a second thread spins on a busy machine)."""
    m = trained_model()
    yield m
    m.set_fast_path(None)


def _batch(digits, n=64):
    return digits.test.x[:n], digits.test.y[:n]


@pytest.mark.parametrize("fp", [fastpath.FastPath(channels_last=True), fastpath.FastPath(amp="bf16")],
                         ids=["channels_last", "bf16"])
def test_attack_gradients_are_float32_and_equal_the_plain_path(fast_model, digits, fp):
    x, y = _batch(digits)
    plain_adv = pgd(fast_model, x, y, 0.1, steps=10, generator=torch.Generator().manual_seed(0))
    plain_e, plain_g = fast_model.grad_energy(x, y)
    fastpath.apply(fast_model, fp)
    adv = pgd(fast_model, x, y, 0.1, steps=10, generator=torch.Generator().manual_seed(0))
    e, g = fast_model.grad_energy(x, y)
    assert e.dtype == g.dtype == torch.float32
    # bf16 never touches a pass that takes a gradient: bit-identical to the plain path
    exact = fp.amp == "bf16"
    torch.testing.assert_close(g, plain_g, rtol=0 if exact else 1e-4, atol=0 if exact else 1e-6)
    torch.testing.assert_close(e, plain_e, rtol=0 if exact else 1e-5, atol=0 if exact else 1e-5)
    assert (adv != plain_adv).float().mean() <= (0 if exact else 0.01)


def test_bf16_runs_forward_passes_without_gradient_in_bfloat16(fast_model, digits):
    x, _ = _batch(digits)
    with torch.no_grad():
        ref = fast_model.logits(x)
    seen = []
    hook = fast_model.net.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    try:
        fastpath.apply(fast_model, fastpath.FastPath(amp="bf16"))
        with torch.no_grad():
            out = fast_model.logits(x)
        with torch.enable_grad():
            fast_model.logits(x.clone().requires_grad_(True))
    finally:
        hook.remove()
    assert seen == [torch.bfloat16, torch.float32]
    assert out.dtype == torch.float32  # callers always get float32 logits
    diff = (out - ref).abs().max().item()
    assert 0 < diff < 0.05 * ref.abs().max().item()  # really bf16, and close
    assert (out.argmax(1) == ref.argmax(1)).float().mean() > 0.95


def test_plain_block_switches_every_fast_path_off(fast_model, digits):
    x, _ = _batch(digits, 16)
    fastpath.apply(fast_model, fastpath.FastPath(amp="bf16", channels_last=True))
    with torch.no_grad(), fast_model.plain():
        assert fast_model.fast_path is None
        plain = fast_model.logits(x)
    assert fast_model.fast_path is not None
    with torch.no_grad():
        assert not torch.equal(plain, fast_model.logits(x))
        with fastpath.without_amp(fast_model):  # channels_last kept, bf16 off
            assert fast_model.fast_path.fp == fastpath.FastPath(channels_last=True)
            torch.testing.assert_close(fast_model.logits(x), plain, rtol=1e-5, atol=1e-5)
        assert fast_model.fast_path.fp.amp == "bf16"


def test_fisher_scores_ignore_fast_paths(fast_model, digits):
    x, y = _batch(digits, 20)

    def scores():
        return fisher_scores(fast_model, x, y, probes=4, generator=torch.Generator().manual_seed(1), run=Execution(batch_size=8))

    ref = scores()
    fastpath.apply(fast_model, fastpath.FastPath(amp="bf16", channels_last=True))
    with fast_model.plain():
        got = scores()
    for k in ref:
        for name in ref[k]:
            assert torch.equal(ref[k][name], got[k][name]), (k, name)


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_network_equals_the_eager_one(fast_model, digits):
    x, y = _batch(digits)
    with torch.no_grad():
        ref = fast_model.logits(x)
    ref_adv = pgd(fast_model, x, y, 0.1, steps=3, generator=torch.Generator().manual_seed(0))
    fastpath.apply(fast_model, fastpath.FastPath(compile=True))
    with torch.no_grad():
        out = fast_model.logits(x)
    adv = pgd(fast_model, x, y, 0.1, steps=3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert (adv != ref_adv).float().mean() < 0.01  # the sign of a gradient may flip only at 0


def test_unknown_amp_mode_is_refused():
    with pytest.raises(BenchError, match="unknown amp 'fp16'"):
        fastpath.FastPath.from_settings({"amp": "fp16"})


def test_fast_path_run_passes_check_against_the_plain_run(tmp_path, one_thread, monkeypatch, figures_not_rendered):
    """End to end on the released JEAT checkpoint: bf16 + channels_last moves no metric beyond
    bench check's tolerance, and bench check accepts the comparison (noting the fast paths).
    AutoAttack's standard version is iteration-bound (APGD-T, FAB-T and Square's 5,000 queries on
    every point still robust: minutes of CPU even on 4 points), so its group runs APGD-CE only here
    (and the figures are not written as PNG);
    tests/test_autoattack.py::test_autoattack_runs_in_float32_under_amp_bf16 checks that every
    attack of the standard version stays float32 under --amp bf16."""
    from bench.engines import aa_eval

    real = aa_eval.run_autoattack
    monkeypatch.setattr(aa_eval, "run_autoattack",
                        lambda *a, **kw: real(*a, **{**kw, "version": "custom", "attacks": ["apgd-ce"]}))
    kw = dict(model=str(zoo.released_path()), suite="robust,calibration,landscape", log=lambda m: None,
              settings={"n_eval": 100, "n_aa": 4, "landscape_images": 2, "landscape_resolution": 9})
    plain = runner.run(out=tmp_path / "plain", **kw)
    kw["settings"] = dict(kw["settings"], amp="bf16", channels_last=True)
    fast = runner.run(out=tmp_path / "fast", **kw)
    assert set(plain.metrics) == set(fast.metrics) >= {"accuracy", "pgd20", "autoattack", "ece_fgsm",
                                                     "landscape_flatness"}
    assert fast.run["config"]["amp"] == "bf16" and plain.run["config"]["amp"] == "off"
    assert not check.setting_differences(plain, fast)
    report = check.compare(read_results(tmp_path / "plain"), read_results(tmp_path / "fast"))
    assert any("fast paths differ" in n for n in report.notes)
    bad = [(r.metric, r.baseline, r.current, r.tolerance) for r in report.rows if r.status == "REGRESSION"]
    assert not bad
    # the attacks ran in float32 on the same points: robust accuracy moves by at most a point or two
    for name in ("pgd20", "pgd20_energy"):
        assert abs(fast.metrics[name].value - plain.metrics[name].value) <= 2 / 100
