"""AutoAttack beside PGD on the same points (issue 12, item 3) and in float32 under --amp bf16
(item 4).  Expected values come from pyautoattack called directly, from a PGD loop written out
here, or from hand-made results files."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from pyautoattack import AutoAttack
from torch import nn

from bench.core.energy import EnergyModel
from bench.core.settings import DEFAULTS
from bench.engines import aa_adapter, aa_eval
from bench.metrics import Context, group_points, load_all
from bench.metrics import robustness as rob
from bench.outputs import table_files
from bench.runtime import fastpath
from tests.conftest import tiny_model, trained_model

EPS = 0.1

pytestmark = pytest.mark.usefixtures("one_thread")


def make_ctx(model, ds, tmp_path, **settings):
    s = dict(DEFAULTS, eps=EPS, pgd_step_size=EPS / 4, n_eval=40, batch_size=50, model_sha256=None)
    s.update(settings)
    return Context(model, ds, s, torch.device("cpu"), tmp_path)


def apgd_ce_only(monkeypatch):
    """The group's pyautoattack call with 'standard' shortened to APGD-CE (speed)."""
    real = aa_eval.run_autoattack
    monkeypatch.setattr(aa_eval, "run_autoattack",
                        lambda *a, **kw: real(*a, **{**kw, "version": "custom", "attacks": ["apgd-ce"]}))


def hand_pgd(model, x, y, start, eps, steps=20):
    """L-inf PGD written out: sign steps of eps/4 on the summed cross-entropy, clip, clamp."""
    adv = start.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model.logits(adv), y, reduction="sum"), adv)
        adv = torch.min(torch.max(adv.detach() + eps / 4 * g.sign(), x - eps), x + eps).clamp(0, 1)
    return adv


# ---------------------------------------------------------------------------------------------
# item 3: the same points


def test_autoattack_group_reports_clean_and_pgd20_on_its_own_points(digits, tmp_path, monkeypatch):
    apgd_ce_only(monkeypatch)
    m = trained_model()
    ctx = make_ctx(m, digits, tmp_path, n_eval=40, n_aa=16)  # n_aa < n_eval: a prefix
    group = load_all()["autoattack"]
    assert {"accuracy_aa", "pgd20_aa"} <= set(group.metrics)
    assert {"pgd_steps", "pgd_step_size", "pgd_restarts"} <= set(group.settings)  # pgd20_aa reads them
    out = group.fn(ctx)
    aa, acc, pgd = out["autoattack"], out["accuracy_aa"], out["pgd20_aa"]
    assert aa.n == acc.n == pgd.n == 16
    x, y = digits.test.x[:16], digits.test.y[:16]
    with torch.no_grad():
        clean = m.logits(x).argmax(1) == y
    assert acc.value == clean.double().mean().item()
    # PGD-20 on these points from the pgd20 group's random starts (stream pgd20/batch0), by hand
    idx = clean.nonzero().squeeze(1)
    u = torch.rand(x[idx].shape, generator=ctx.generator("pgd20/batch0"))
    start = (x[idx] + (2 * u - 1) * EPS).clamp(0, 1)
    adv = hand_pgd(m, x[idx], y[idx], start, EPS)
    with torch.no_grad():
        n_robust = int((m.logits(adv).argmax(1) == y[idx]).sum())
    assert pgd.value == n_robust / 16 and pgd.value < acc.value
    # recorded: AutoAttack <= PGD-20 on the shared points, with the per-point comparison
    same = aa.details["same_points"]
    assert same["n"] == 16 and same["pgd20_robust"] == n_robust
    assert same["autoattack_robust"] == round(aa.value * 16)
    assert same["autoattack_le_pgd20"] == (aa.value <= pgd.value)
    assert same["autoattack_robust"] - same["fooled_by_pgd20_only"] == n_robust - same["fooled_by_autoattack_only"]
    json.dumps({k: r.to_json() for k, r in out.items()})


def test_autoattack_group_gives_three_reasons_for_an_unsupported_threat_model(digits, tmp_path):
    out = load_all()["autoattack"].fn(make_ctx(trained_model(), digits, tmp_path, n_aa=4, norm="Linf2"))
    assert set(out) == {"autoattack", "accuracy_aa", "pgd20_aa"}
    assert all(r.value is None and "Linf2" in r.reason for r in out.values())


def _metric(value, n, **details):
    d = {"value": value, "std": 0.01, "n": n, "reason": None, "seconds": 1.0}
    return {**d, "details": details} if details else d


def _run(root, name, method, metrics, config=None):
    d = root / name
    d.mkdir()
    (d / "results.json").write_text(json.dumps({
        "schema": 1, "model": {"sha256": name * 8, "arch": "digits-cnn", "method": method, "dataset": "digits"},
        "run": {"config": config or {"norm": "Linf", "eps": 0.1}}, "metrics": metrics}))
    return d


def test_table3_puts_side_by_side_only_numbers_from_the_same_points(tmp_path):
    subset = _run(tmp_path, "a", "jeat", {  # AutoAttack on the first 100 of 450 points
        "accuracy": _metric(0.96, 450), "pgd20": _metric(0.77, 450), "autoattack": _metric(0.82, 100),
        "accuracy_aa": _metric(0.97, 100), "pgd20_aa": _metric(0.87, 100)})
    everywhere = _run(tmp_path, "b", "at", {  # AutoAttack on all points: the plain metrics
        "accuracy": _metric(0.90, 450), "pgd20": _metric(0.70, 450), "autoattack": _metric(0.65, 450),
        "accuracy_aa": _metric(0.90, 450), "pgd20_aa": _metric(0.70, 450)})
    old = _run(tmp_path, "c", "jem", {  # an older results file: AutoAttack on a subset, no _aa metrics
        "accuracy": _metric(0.95, 450), "pgd20": _metric(0.48, 450), "autoattack": _metric(0.55, 100)})
    t = next(t for t in table_files.build([subset, everywhere, old], tmp_path / "out", report=False).tables
             if t.name == "table3")
    assert list(t.columns) == ["Standard Accuracy", "Robustness (PGD-20, Linf)", "AutoAttack (Linf)"]
    ours = t.df[t.df["source"] == "ours"].reset_index(drop=True)[list(t.columns)]  # the numbers, not the context
    assert ours.iloc[0, 0:].tolist() == pytest.approx([97.0, 87.0, 82.0])  # all on the 100 points
    assert ours.iloc[1, 0:].tolist() == pytest.approx([90.0, 70.0, 65.0])
    assert ours.iloc[2, 0:2].tolist() == pytest.approx([95.0, 48.0]) and math.isnan(ours.iloc[2, 2])
    md = table_files.to_markdown(t)
    assert "AutoAttack ran on 100 points, the other columns on 450" in md
    assert "first 100 of the test split" in md
    row_a = next(line for line in md.splitlines() if line.startswith("| JEAT |"))  # no checkpoint path: its method
    assert row_a.count("[") == 3  # every number of that row carries the points note


# ---------------------------------------------------------------------------------------------
# item 4: float32 throughout, gradients w.r.t. the input only


class DtypeSpy(nn.Module):
    """Records the dtype the wrapped network computed in, call by call."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.dtypes = []

    def forward(self, z):
        out = self.net(z)
        self.dtypes.append(out.dtype)
        return out


def test_autoattack_runs_in_float32_under_amp_bf16(digits):
    spy = DtypeSpy(trained_model().net)
    m = fastpath.apply(EnergyModel(spy, 0.5, 0.5, (1, 8, 8), 10).eval(), fastpath.FastPath(amp="bf16"))
    x, y = digits.test.x[:4], digits.test.y[:4]
    with torch.no_grad():
        m.logits(x)
    assert spy.dtypes == [torch.bfloat16]  # the fast path is on: a no-grad forward runs in bf16
    spy.dtypes.clear()
    # Square attacks under no_grad: the forward passes the fast path would autocast
    res = aa_eval.evaluate_autoattack(m, x, y, eps=EPS, version="custom", attacks=["square"], batch_size=4)
    assert len(spy.dtypes) > 100 and set(spy.dtypes) == {torch.float32}
    assert res.details["precision"].startswith("float32")
    spy.dtypes.clear()
    with torch.no_grad():
        m.logits(x)
    assert spy.dtypes == [torch.bfloat16]  # and it is back on afterwards


def test_autoattack_computes_no_weight_gradients_and_equals_pyautoattack(digits):
    """FAB-T calls backward(): with the parameters requiring grad it computed (and accumulated into
    .grad) every weight gradient.  The attack, computed w.r.t. the input only, is unchanged:
    equal to pyautoattack's on the same model."""
    m = tiny_model(width=4)
    m.load_state_dict(trained_model().state_dict())
    m.requires_grad_(True)
    x, y = digits.test.x[:3], digits.test.y[:3]
    kw = {"norm": "Linf", "eps": 0.2, "seed": 0, "version": "custom", "attacks": ["fab-t"]}
    out = aa_adapter.run_autoattack(m, x, y, **kw)
    assert all(p.grad is None for p in m.parameters())
    assert all(p.requires_grad for p in m.parameters())  # restored
    x_ref, y_ref = AutoAttack(m, device="cpu", **kw).run_standard_evaluation(x, y)
    assert torch.equal(out.x_adv, x_ref) and torch.equal(out.y_adv, y_ref)
    assert (out.x_adv != x).any()  # FAB-T moved some point


def test_resume_state_is_keyed_by_the_weights_as_loaded_and_their_normalisation(digits, tmp_path, monkeypatch):
    """The same file under another --normalize is another model: its AutoAttack state must not be
    resumed.  The group keys the state by weights_sha256 (not the file's sha256), the key holds the
    normalisation too."""
    from bench.engines import aa_adapter, aa_eval

    monkeypatch.setattr(aa_eval, "autoattack_flags", lambda *a, **k: (_ for _ in ()).throw(RuntimeError(k["model_id"])))
    ctx = make_ctx(tiny_model(), digits, tmp_path, model_sha256="the-file", weights_sha256="as-loaded", n_aa=4)
    with pytest.raises(RuntimeError, match="as-loaded"):
        rob.autoattack_group(ctx)
    monkeypatch.undo()
    x, y = digits.test.x[:4], digits.test.y[:4]
    keys = []
    for mean in (0.5, 0.0):  # one file, two normalisations
        model = tiny_model()
        model.mean.fill_(mean)
        aa_adapter.run_blocks(lambda xb, yb, path: keys.append(path.name), model, x, y,
                              aa_adapter.AAConfig(EPS), aa_adapter.Execution(batch_size=50), tmp_path, "same-id")
    assert keys[0] != keys[1]


def test_pgd20_aa_takes_pgd20_s_starts_under_linf_on_the_cpu(digits, tmp_path):
    """What the docs claim of pgd20_aa: under L-inf with one restart on the CPU its starts are
    pgd20's (a CPU generator's uniform draws for a prefix of the points are a prefix of its draws),
    so its per-point flags are pgd20's on AutoAttack's points."""
    m = trained_model()
    ctx = make_ctx(m, digits, tmp_path, n_eval=40, n_aa=16, batch_size=25)  # AutoAttack's points end mid-batch
    _, full = group_points.pgd_flags(ctx, "ce", "pgd20")
    _, prefix = group_points.pgd_flags(ctx, "ce", "pgd20", points="n_aa")
    assert torch.equal(full[:16], prefix)
