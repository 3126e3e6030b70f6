"""The L2 threat model (--norm L2, issue 15): PGD-L2 against torchattacks' PGDL2, FGM and the
uniform start by hand, AutoAttack L2 against pyautoattack called directly, the norm-dependent
eps check and defaults, the cache key and the table labels."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from pyautoattack import AutoAttack
from scipy import stats

from bench.cli import main
from bench.core.errors import BenchError
from bench.core.settings import DEFAULTS
from bench.engines import aa_eval
from bench.engines.attacks import check_in_ball, fgsm, pgd, uniform_start
from bench.inputs import checkpoints, zoo
from bench.metrics import Context, load_all
from bench.outputs import paper_layout, table_files
from bench.pipeline import cache_keys, runner
from tests.conftest import trained_model

EPS = 0.5

pytestmark = pytest.mark.usefixtures("one_thread")


def l2(t):
    return t.flatten(1).norm(dim=1)


def test_pgd_l2_equals_torchattacks_pgdl2_from_the_same_start(digits):
    m = trained_model()
    x, y = digits.test.x[:50], digits.test.y[:50]
    torch.manual_seed(11)
    theirs = torchattacks.PGDL2(m, eps=EPS, alpha=EPS / 4, steps=20, random_start=True)(x, y)
    torch.manual_seed(11)  # torchattacks' start, drawn the way torchattacks draws it
    delta = torch.empty_like(x).normal_()
    n = delta.flatten(1).norm(p=2, dim=1).view(-1, 1, 1, 1)
    r = torch.zeros_like(n).uniform_(0, 1)
    start = torch.clamp(x + delta * r / n * EPS, 0, 1)
    ours = pgd(m, x, y, EPS, steps=20, step_size=EPS / 4, loss="ce", x_start=start, norm="L2")
    # torchattacks takes the mean loss and adds 1e-10 to the gradient norm: equal up to rounding
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)
    assert (l2(ours - x) > 0.9 * EPS).sum() > 10  # the attack moved, many points to the boundary
    assert l2(ours - x).max() <= EPS * (1 + 1e-5)
    with torch.no_grad():
        assert torch.equal(m.logits(ours).argmax(1), m.logits(theirs).argmax(1))


def test_fgm_is_one_normalised_gradient_step(digits):
    m = trained_model()
    x, y = digits.test.x[:40], digits.test.y[:40]
    xg = x.clone().requires_grad_(True)
    # the cross-entropy in float64 (bench.engines.attacks.attack_loss: at a saturated softmax the float32
    # gradient is rounding noise)
    (g,) = torch.autograd.grad(F.cross_entropy(m.logits(xg).double(), y, reduction="sum"), xg)
    norms = g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    expected = (x + EPS * g / norms).clamp(0, 1)
    ours = fgsm(m, x, y, EPS, norm="L2")
    assert torch.allclose(ours, expected, atol=1e-6, rtol=0)
    assert check_in_ball(x, ours, EPS, norm="L2") == pytest.approx(l2(ours - x).max().item())


def test_l2_start_is_uniform_in_the_ball():
    """On x = 0.5 no clipping happens at eps 0.5, and a uniform point of the d-ball has radius
    eps * U^(1/d): (r / eps)^d is uniform on [0, 1]; the directions average to zero."""
    d, n = 64, 4000
    x = torch.full((n, 1, 8, 8), 0.5)
    start = uniform_start(x, EPS, torch.Generator().manual_seed(0), norm="L2")
    r = l2(start - x) / EPS
    assert r.max() <= 1 + 1e-6
    assert stats.kstest((r.double() ** d).numpy(), "uniform").pvalue > 1e-3
    mean_dir = ((start - x).flatten(1) / (r * EPS).unsqueeze(1)).mean(0)
    assert mean_dir.abs().max() < 15 / math.sqrt(n * d)  # 15 standard errors of a coordinate


def test_check_in_ball_l2_refuses_outside_examples():
    x = torch.zeros(2, 1, 2, 2)
    inside = x + 0.25  # L2 norm 0.5
    assert check_in_ball(x, inside, 0.5, norm="L2") == pytest.approx(0.5)
    with pytest.raises(RuntimeError, match="L2"):
        check_in_ball(x, x + 0.3, 0.5, norm="L2")  # L2 0.6, though L-inf only 0.3


def make_ctx(model, ds, tmp_path, **settings):
    s = dict(DEFAULTS, norm="L2", eps=EPS, pgd_step_size=EPS / 4, n_eval=60, batch_size=50, model_sha256=None)
    s.update(settings)
    return Context(model, ds, s, torch.device("cpu"), tmp_path)


def test_pgd_groups_under_l2(digits, tmp_path):
    ctx = make_ctx(trained_model(), digits, tmp_path)
    groups = load_all()
    acc = groups["accuracy"].fn(ctx)["accuracy"].value
    for name, loss in (("pgd20", "ce"), ("pgd20_energy", "energy")):
        r = groups[name].fn(ctx)[name]
        assert r.details["threat_model"]["norm"] == "L2" and r.details["threat_model"]["loss"] == loss
        assert 0 < r.details["max_l2"] <= EPS * (1 + 1e-5)
        assert r.value < acc


def test_autoattack_l2_equals_pyautoattack_direct(digits, tmp_path):
    m = trained_model()
    x, y = digits.test.x[:24], digits.test.y[:24]
    kw = {"norm": "L2", "eps": EPS, "seed": 0, "version": "custom", "attacks": ["apgd-ce"]}
    x_ref, y_ref = AutoAttack(m, device="cpu", **kw).run_standard_evaluation(x, y, batch_size=250)
    out = aa_eval.run_autoattack(m, x, y, batch_size=250, **kw)
    assert torch.equal(out.x_adv, x_ref) and torch.equal(out.y_adv, y_ref)
    res = aa_eval.evaluate_autoattack(m, x, y, batch_size=250, state_dir=tmp_path, model_id="m", **kw)
    assert res.value == (y_ref == y).double().mean().item() < 1
    assert res.details["threat_model"]["norm"] == "L2" and 0 < res.details["max_l2"] <= EPS * (1 + 1e-5)


def test_autoattack_group_passes_the_norm_to_pyautoattack(digits, tmp_path, monkeypatch):
    seen = []
    real = aa_eval.run_autoattack

    def spy(*a, **kw):
        seen.append(kw["norm"])
        return real(*a, **{**kw, "version": "custom", "attacks": ["apgd-ce"]})

    monkeypatch.setattr(aa_eval, "run_autoattack", spy)
    out = load_all()["autoattack"].fn(make_ctx(trained_model(), digits, tmp_path, n_aa=8))
    assert seen == ["L2"] and out["autoattack"].details["threat_model"]["norm"] == "L2"
    assert out["pgd20_aa"].details["threat_model"]["norm"] == "L2"


# ---------------------------------------------------------------------------------------------
# settings: eps check and defaults by norm, cache key, table labels


def test_eps_check_depends_on_the_norm():
    s = dict(DEFAULTS, norm="L2", eps=1.5)
    runner.validate_settings(s, (1, 8, 8))  # an L2 eps may exceed 1
    runner.validate_settings(dict(s, eps=8.0), (1, 8, 8))  # the diameter sqrt(64) itself
    with pytest.raises(BenchError, match=r"sqrt\(64\) = 8"):
        runner.validate_settings(dict(s, eps=8.5), (1, 8, 8))
    with pytest.raises(BenchError, match="non-negative"):
        runner.validate_settings(dict(s, eps=-0.1), (1, 8, 8))
    with pytest.raises(BenchError, match=r"outside \[0, 1\)"):
        runner.validate_settings(dict(s, norm="Linf"), (1, 8, 8))
    with pytest.raises(BenchError, match="unknown norm"):
        runner.validate_settings(dict(s, norm="L3"), (1, 8, 8))


def test_cli_refuses_an_l2_eps_above_the_diameter(tmp_path, capsys):
    rc = main(["run", "--norm", "L2", "--eps", "9", "--suite", "robust", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "sqrt(64)" in err[0]


def test_l2_eps_default_is_the_data_sets_not_the_checkpoints_linf_eps(digits):
    loaded = checkpoints.load(str(zoo.released_path()))
    assert runner.resolve_settings({}, loaded, digits)["eps"] == pytest.approx(0.1)  # trained at L-inf 0.1
    s = runner.resolve_settings({"norm": "L2"}, loaded, digits)
    assert s["norm"] == "L2" and s["eps"] == 0.5 and s["pgd_step_size"] == 0.125
    assert s["landscape_radius"] == pytest.approx(0.2)  # the landscape keeps its L-inf size
    assert runner.resolve_settings({"norm": "L2", "eps": 1.2}, loaded, digits)["eps"] == 1.2


def test_norm_keys_the_cache_of_every_attack_group():
    groups = load_all()
    for name in ("pgd20", "pgd20_energy", "autoattack", "ece_fgsm"):
        g = groups[name]
        keys = {cache_keys.cache_key(g, "m", "digits", dict(DEFAULTS, eps=0.1, norm=n)) for n in ("Linf", "L2")}
        assert len(keys) == 2, name


def _run(root, name, norm, eps):
    d = root / name
    d.mkdir()
    tm = {"threat_model": {"norm": norm, "eps": eps}}
    m = {k: {"value": v, "std": 0.01, "n": 100, "reason": None, "seconds": 1.0, "details": tm}
         for k, v in (("accuracy", 0.95), ("pgd20", 0.6), ("autoattack", 0.5), ("accuracy_aa", 0.95),
                      ("pgd20_aa", 0.6))}
    (d / "results.json").write_text(json.dumps({
        "schema": 1, "model": {"sha256": name * 8, "arch": "digits-cnn", "method": "jeat", "dataset": "digits"},
        "run": {"config": {"norm": norm, "eps": eps}}, "metrics": m}))
    return d


def test_table3_columns_name_the_norm(tmp_path):
    t = paper_layout.table3([r for _, r in table_files.load_runs([_run(tmp_path, "a", "L2", 0.5)])])
    assert list(t.columns) == ["Standard Accuracy", "Robustness (PGD-20, L2)", "AutoAttack (L2)"]
    assert "paper: Linf, eps 8/255" in table_files.to_markdown(t)  # the paper's rows are L-inf
    mixed = paper_layout.table3([r for _, r in table_files.load_runs([tmp_path / "a", _run(tmp_path, "b", "Linf", 0.1)])])
    assert list(mixed.columns) == ["Standard Accuracy", "Robustness (PGD-20)", "AutoAttack"]
    md = table_files.to_markdown(mixed)
    assert "L2, eps 0.5" in md and "Linf, eps 0.1" in md


def test_ece_fgsm_under_l2_uses_fgm_inputs(digits, tmp_path):
    """ece_fgsm (and the calibration extras on FGSM inputs) under --norm L2: the inputs are the fast
    gradient method's x + eps g / ||g||_2, clamped; the ECE is recounted by hand from those inputs."""
    from bench.metrics import calibration as cal

    model = trained_model()
    ctx = make_ctx(model, digits, tmp_path, norm="L2", eps=0.5, n_eval=120, ece_bins=20)
    r = cal._ece_result(ctx, adversarial=True)
    assert r.value is not None and r.details["threat_model"]["norm"] == "L2"
    assert 0 < r.details["threat_model"]["max_l2"] <= 0.5 * (1 + 1e-5)
    x, y = digits.test.x[:120], digits.test.y[:120]
    with torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model.logits(xg), y, reduction="sum"), xg)
    adv = (x + 0.5 * g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)).clamp(0, 1)
    with torch.no_grad():
        conf, pred = torch.softmax(model.logits(adv).double(), 1).max(1)
    edges = torch.linspace(0, 1, 21, dtype=torch.float64)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.double().mean() * ((pred[m] == y[m]).double().mean() - conf[m].mean()).abs()
    assert r.value == pytest.approx(float(ece), abs=1e-6)
    extra = cal._extra_results(ctx, adversarial=True)
    assert extra["nll_fgsm"].value is not None and extra["nll_fgsm"].details["threat_model"]["attack"] == "FGM"
