"""Robustness curves (--eps-grid, issues 23 part 4 and 26 item 3): the curve's PGD points against
``attacks.pgd`` run at each eps directly, eps 0 against the clean accuracy by hand, the standard
error against sqrt(p(1-p)/n), AutoAttack's points against pyautoattack called directly, attacks
that plug in by registration, the figure and tables (one run and ``bench table`` over two), the
default that runs nothing, and bad grids as one-line errors."""

import csv
import math

import pytest
import torch
from pyautoattack import AutoAttack

from bench.cli import main
from bench.core import outcomes
from bench.core.errors import BenchError
from bench.core.metric_facts import POINTS, PROPORTION
from bench.core.results import Result, Results
from bench.core.settings import DEFAULTS
from bench.core.stats import proportion_se
from bench.engines import aa_eval
from bench.engines.attacks import pgd
from bench.metrics import Context, _seed_for, curves, load_all, registry
from bench.outputs import table_files
from tests.conftest import tiny_model, trained_model

pytestmark = pytest.mark.usefixtures("one_thread")

N, BATCH = 60, 50  # two batches: the per-batch random streams are exercised


def make_ctx(model, ds, out, **settings):
    s = dict(DEFAULTS, eps=0.1, pgd_step_size=0.025, n_eval=N, batch_size=BATCH, model_sha256=None,
             weights_sha256=None, curve_attacks="pgd20")
    s.update(settings)
    return Context(model, ds, s, torch.device("cpu"), out)


def pgd_by_hand(model, ds, eps, norm, loss="ce"):
    """Robust flags of the first N points: attacks.pgd from pgd20's stream of each batch, clean-correct points only."""
    x_all, y_all = ds.test.x[:N], ds.test.y[:N]
    flags = []
    for i in range(0, N, BATCH):
        x, y = x_all[i:i + BATCH], y_all[i:i + BATCH]
        gen = torch.Generator().manual_seed(_seed_for(0, f"pgd20/batch{i // BATCH}"))
        with torch.no_grad():
            clean = model.logits(x).argmax(1) == y
        adv = x.clone()
        idx = clean.nonzero().squeeze(1)
        adv[idx] = pgd(model, x[idx], y[idx], eps, 20, eps / 4, loss, True, gen, norm=norm)
        with torch.no_grad():
            flags.append(model.logits(adv).argmax(1) == y)
    return torch.cat(flags)


@pytest.mark.parametrize("norm,grid", [("Linf", [0.05, 0.2]), ("L2", [0.3, 1.0])])
def test_pgd_points_equal_attacks_pgd_at_each_eps(digits, tmp_path, norm, grid):
    m = trained_model()
    out = curves.curve_group(make_ctx(m, digits, tmp_path, norm=norm, eps=grid[0], pgd_step_size=grid[0] / 4,
                                      eps_grid=grid))
    assert list(out) == ["curve_pgd20_0"] + [f"curve_pgd20_{e:g}" for e in grid]
    with torch.no_grad():
        clean = m.logits(digits.test.x[:N]).argmax(1) == digits.test.y[:N]
    r0 = out["curve_pgd20_0"]
    assert r0.value == clean.double().mean().item() and r0.n == N
    values = [r0.value]
    for eps in grid:
        r = out[f"curve_pgd20_{eps:g}"]
        ref = pgd_by_hand(m, digits, eps, norm)
        assert (outcomes.unpack(r.details[outcomes.KEY]).astype(bool) == ref.numpy()).all()
        assert r.value == ref.double().mean().item()
        p = r.value
        assert r.std == pytest.approx(math.sqrt(p * (1 - p) / N), abs=1e-15)
        assert r.details["threat_model"]["norm"] == norm and r.details["threat_model"]["eps"] == eps
        assert r.details["threat_model"]["step_size"] == pytest.approx(eps / 4)
        values.append(p)
    assert values[-1] < values[0]  # the attack does something at the largest radius
    cur = r.details["curve"]
    assert cur["monotone"] == all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert (tmp_path / "figures" / "robustness_curve.png").stat().st_size > 0
    assert r.details["figure"] == "figures/robustness_curve.png"


def test_curve_through_the_run_eps_is_pgd20_and_eps0_is_accuracy(digits, tmp_path):
    ctx = make_ctx(trained_model(), digits, tmp_path, eps_grid=[0.1], curve_attacks="pgd20,pgd20_energy")
    groups = load_all()
    out = groups["robust_curve"].fn(ctx)
    assert out["curve_pgd20_0.1"].value == groups["pgd20"].fn(ctx)["pgd20"].value
    assert out["curve_pgd20_energy_0.1"].value == groups["pgd20_energy"].fn(ctx)["pgd20_energy"].value
    assert out["curve_pgd20_0"].value == groups["accuracy"].fn(ctx)["accuracy"].value


def test_autoattack_points_equal_pyautoattack_direct(digits, tmp_path, monkeypatch):
    real = aa_eval.run_autoattack
    custom = {"version": "custom", "attacks": ["apgd-ce"]}
    monkeypatch.setattr(aa_eval, "run_autoattack", lambda *a, **kw: real(*a, **{**kw, **custom}))
    m = trained_model()
    out = curves.curve_group(make_ctx(m, digits, tmp_path, n_aa=16, eps_grid=[0.2], curve_attacks="autoattack"))
    x, y = digits.test.x[:16], digits.test.y[:16]
    _, y_adv = AutoAttack(m, norm="Linf", eps=0.2, seed=0, device="cpu", **custom).run_standard_evaluation(
        x, y, batch_size=BATCH)
    r = out["curve_autoattack_0.2"]
    assert r.n == 16 and r.value == (y_adv == y).double().mean().item() < 1
    assert out["curve_autoattack_0"].n == 16


def test_an_attack_plugs_in_by_registration(digits, tmp_path, monkeypatch):
    group = registry.GROUPS["robust_curve"]
    monkeypatch.setattr(group, "settings", group.settings)
    monkeypatch.setattr(curves, "ATTACKS", dict(curves.ATTACKS))
    seen = []

    @curves.curve_attack("fooled_all", settings=("ece_bins",), label="fools every point")
    def fooled_all(ctx, eps):
        seen.append((eps, ctx.settings["eps"], ctx.settings["ece_bins"]))  # its setting is readable
        flags = torch.zeros(N, dtype=torch.bool)
        return Result(0.0, 0.0, N, details={}), flags

    assert "ece_bins" in group.settings
    s = dict(DEFAULTS, eps=0.1, eps_grid=[0.3, 0.1])
    assert "curve_fooled_all_0.3" in curves.names(s)  # every registered attack by default
    out = curves.curve_group(make_ctx(trained_model(), digits, tmp_path, eps_grid=[0.3, 0.1],
                                      curve_attacks="fooled_all"))
    assert list(out) == ["curve_fooled_all_0", "curve_fooled_all_0.1", "curve_fooled_all_0.3"]
    assert seen == [(0.1, 0.1, 20), (0.3, 0.3, 20)]  # each radius in the settings it sees
    assert out["curve_fooled_all_0.3"].details["curve"]["monotone"]


def test_no_grid_no_curve_and_facts():
    g = load_all()["robust_curve"]
    assert g.for_settings(dict(DEFAULTS)).metrics == ()  # the runner leaves such a group out
    sp = registry.spec("curve_pgd20_energy_0.05")
    assert sp.portable == POINTS and sp.tolerance == PROPORTION and sp.bounds == (0.0, 1.0)
    assert proportion_se(0.3, 200) == pytest.approx(0.03240370349, abs=1e-11)  # sqrt(0.21 / 200)
    with pytest.raises(BenchError, match="unknown curve attack 'nope'"):
        curves.names(dict(DEFAULTS, eps_grid=[0.1], curve_attacks="nope"))


def test_run_and_bench_table_write_the_curves(digits, tmp_path):
    runs = []
    for i, m in enumerate((trained_model(), tiny_model())):
        d = tmp_path / f"run{i}"
        out = curves.curve_group(make_ctx(m, digits, d, eps_grid=[0.1]))
        res = Results({"method": "jeat", "arch": "digits-cnn", "dataset": "digits"},
                      {"config": dict(DEFAULTS, eps=0.1), "name": f"model {i}"}, out)
        res.write(d / "results.json")
        runs.append(res)
        paths = table_files.write_run_tables(res, d / "tables")
        assert d / "tables" / "curve_pgd20.csv" in paths
    built = table_files.build([tmp_path / "run0", tmp_path / "run1"], tmp_path / "t")
    assert (tmp_path / "t" / "robustness_curves.png").stat().st_size > 0
    assert built.report is not None and "robustness_curves.png" in built.report.read_text()
    rows = list(csv.DictReader((tmp_path / "t" / "curve_pgd20.csv").open()))
    assert [r["Model"] for r in rows] == ["model 0", "model 1"]
    for row, res in zip(rows, runs, strict=True):
        for eps in ("0", "0.1"):
            r = res.metrics[f"curve_pgd20_{eps}"]
            assert float(row[f"eps {eps}"]) == pytest.approx(100 * r.value, abs=1e-4)
            assert float(row[f"eps {eps} std"]) == pytest.approx(100 * r.std, abs=1e-4)
            assert float(row[f"eps {eps} n"]) == N


@pytest.mark.parametrize("args,msg", [
    (["--eps-grid", "0.1,-0.05"], "eps-grid value must be a non-negative number"),
    (["--eps-grid", "0.1,abc"], "is not a number"),
    (["--eps-grid", "0.5,1.2"], "eps-grid value 1.2 is outside [0, 1)"),
    (["--eps-grid", "0.5,9", "--norm", "L2"], "sqrt(64)"),
    (["--eps-grid", "0.1", "--curve-attacks", "nope"], "unknown curve attack"),
    (["--eps", "0.05,0.1"], "several radii go in --eps-grid"),
])
def test_bad_grids_are_one_line_errors(tmp_path, capsys, args, msg):
    rc = main(["run", "--suite", "robust", "--n-eval", "10", "--out", str(tmp_path / "r"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and msg in err[0], err


def _plug(monkeypatch):
    """Registrations in this test only: the curve group's settings and the attack table restored after."""
    group = registry.GROUPS["robust_curve"]
    monkeypatch.setattr(group, "settings", group.settings)
    monkeypatch.setattr(curves, "ATTACKS", dict(curves.ATTACKS))
    return group


def test_an_attack_setting_not_declared_is_an_error_at_registration(monkeypatch):
    """``curve_attack`` checks its settings as ``register`` does: an unknown name is refused, named
    (it quietly read the setting's default before: the group's view never knew it)."""
    group = _plug(monkeypatch)
    with pytest.raises(ValueError, match=r"curve attack typo: setting 'pgd_stepz' is not declared in "
                                         r"bench.core.settings.SETTINGS"):
        curves.curve_attack("typo", settings=("pgd_stepz",))(lambda ctx, eps: None)
    with pytest.raises(ValueError, match=r"curve attack typo: setting 'n_evals' is not declared"):
        curves.curve_attack("typo", points="n_evals")(lambda ctx, eps: None)
    assert "typo" not in curves.ATTACKS and "pgd_stepz" not in group.settings
    with pytest.raises(ValueError, match=r"group g: setting 'pgd_stepz' is not declared"):  # the same check
        registry.register("g", "s", metrics=("m",), settings=("pgd_stepz",))


@pytest.mark.parametrize("norm,given,seen", [
    # (derived settings left to their derivation follow the radius: pgd_step_size eps / 4 and,
    # under L-inf, the landscape's 2 * the L-inf eps; under L2 the landscape's radius is not the attack's)
    ("Linf", {}, {0.1: (0.025, 0.2), 0.3: (0.075, 0.6)}),
    ("Linf", {"pgd_step_size": 0.025, "landscape_radius": 0.2}, {0.1: (0.025, 0.2), 0.3: (0.075, 0.6)}),
    # a value the user set (not its derivation) is kept at every radius
    ("Linf", {"pgd_step_size": 0.01, "landscape_radius": 0.5}, {0.1: (0.01, 0.5), 0.3: (0.01, 0.5)}),
    ("L2", {"pgd_step_size": 0.025, "landscape_radius": 0.2}, {0.1: (0.025, 0.2), 0.3: (0.075, 0.2)}),
])
def test_an_attack_sees_the_settings_derived_at_each_radius(digits, tmp_path, monkeypatch, norm, given, seen):
    """The settings at radius r are ``settings.complete`` of eps = r (was: eps and pgd_step_size
    rescaled by name, so ``landscape_radius``, 2 * eps, kept the run's value at every radius, and a
    step the user set moved with eps)."""
    _plug(monkeypatch)
    got = {}

    @curves.curve_attack("probe", settings=("landscape_radius",))
    def probe(ctx, eps):
        s = ctx.settings
        got[eps] = (s["eps"], s["pgd_step_size"], s["landscape_radius"])
        return Result(0.0, 0.0, N, details={}), torch.zeros(N, dtype=torch.bool)

    s = dict(DEFAULTS, eps=0.1, norm=norm, n_eval=N, batch_size=BATCH, model_sha256=None, weights_sha256=None,
             eps_grid=[0.1, 0.3], curve_attacks="probe", pgd_step_size=None, landscape_radius=None) | given
    curves.curve_group(Context(tiny_model(), digits, s, torch.device("cpu"), tmp_path))
    assert {e: v[0] for e, v in got.items()} == {0.1: 0.1, 0.3: 0.3}
    assert {e: v[1:] for e, v in got.items()} == {e: pytest.approx(v, rel=1e-12) for e, v in seen.items()}


def test_flags_of_another_shape_are_a_failed_check_not_zero_violations(digits, tmp_path, monkeypatch):
    """The nesting compares each point at two radii: flags of different lengths cannot be compared,
    and the group fails its check (was: skipped and reported as 0 violations)."""
    _plug(monkeypatch)

    @curves.curve_attack("short", label="flags for half the points")
    def short(ctx, eps):
        return Result(0.0, 0.0, N // 2, details={}), torch.zeros(N // 2, dtype=torch.bool)

    with pytest.raises(registry.CheckFailed, match=r"curve attack short: per-point flags of 30 points at eps "
                                                   r"0.1 and of 60 at eps 0"):
        curves.curve_group(make_ctx(tiny_model(), digits, tmp_path, eps_grid=[0.1], curve_attacks="short"))


def test_nested_violations_count_points_robust_at_a_larger_radius_only(digits, tmp_path, monkeypatch):
    """``nested_violations``: points robust at a radius and fooled at a smaller one, counted by hand."""
    _plug(monkeypatch)
    flags = {0.1: torch.tensor([1, 0, 1, 0] * (N // 4), dtype=torch.bool),
             0.2: torch.tensor([0, 1, 1, 0] * (N // 4), dtype=torch.bool)}  # 1 of 4 robust at 0.2 only

    @curves.curve_attack("made_up")
    def made_up(ctx, eps):
        f = flags[eps]
        return Result(f.double().mean().item(), 0.0, N, details={}), f

    out = curves.curve_group(make_ctx(tiny_model(), digits, tmp_path, eps_grid=[0.1, 0.2], curve_attacks="made_up"))
    clean = out["curve_made_up_0"]
    robust_not_clean = int(sum(1 for i in range(N) if flags[0.1][i] and not clean_bit(clean, i)))
    assert out["curve_made_up_0.2"].details["curve"]["nested_violations"] == N // 4 + robust_not_clean


def clean_bit(res, i):
    return bool(outcomes.unpack(res.details[outcomes.KEY])[i])
