"""`bench check DIR --baseline FILE`: tolerances from sampling error, settings must match, exit codes."""

import json
import math

import pytest

from bench import check
from bench.cli import main
from bench.metrics import Result
from tests.test_tables import CONFIG, make_run, metric

N = 360
BINS = {"count": [0] * 18 + [40, 320], "accuracy": [None] * 18 + [0.8, 0.975], "avg_accuracy": 0.955}


def base_metrics():
    return {"accuracy": metric(0.95, math.sqrt(0.95 * 0.05 / N)), "pgd20": metric(0.40), "pgd20_energy": metric(0.0),
            "ece": metric(0.03, bins=BINS), "jfs": metric(0.5, 0.01, 200), "mfs": metric(2.0, 0.05, 200),
            "fid": metric(40.0, None, 100), "is_mean": metric(2.5, 0.1, 100),
            "ssim_nn": metric(0.6, 0.002, 100), "autoattack": metric(None, reason="not installed")}


@pytest.fixture
def baseline(tmp_path):
    return make_run(tmp_path, "baseline", "jeat", base_metrics(), sha="ab" * 32) / "results.json"


def current(tmp_path, config=None, sha="ab" * 32, **changes):
    m = base_metrics()
    for k, v in changes.items():
        if v is None:
            m.pop(k)
        elif isinstance(v, dict):
            m[k] = v
        else:
            m[k] = dict(m[k], value=v)
    return str(make_run(tmp_path, "current", "jeat", m, sha=sha, config=config))


def run(args, capsys):
    code = main(["check", *args])
    out, err = capsys.readouterr()
    return code, out, err


def line(out, name):
    return next(x for x in out.splitlines() if x.split() and x.split()[0] == name)


def test_identical_results_pass(tmp_path, baseline, capsys):
    code, out, err = run([current(tmp_path), "--baseline", str(baseline)], capsys)
    assert code == 0, err
    assert out.splitlines()[0].split() == ["metric", "baseline", "current", "delta", "tolerance", "status"]
    for name in ("accuracy", "pgd20", "pgd20_energy", "ece", "jfs", "mfs", "fid", "is_mean", "ssim_nn"):
        cols = line(out, name).split()
        assert cols[3] == "+0" and cols[5] == "ok", line(out, name)
    assert line(out, "autoattack").split()[5] == "null"
    assert out.splitlines()[-1] == "9 ok, 0 regression(s), 0 missing, 1 null"


def test_perturbation_beyond_tolerance_fails(tmp_path, baseline, capsys):
    code, out, err = run([current(tmp_path, accuracy=0.90), "--baseline", str(baseline)], capsys)
    assert code == 1
    cols = line(out, "accuracy").split()
    assert cols[1:6] == ["0.95", "0.9", "-0.05", "0.04987", "REGRESSION"]
    assert "regression: accuracy" in err
    assert line(out, "pgd20").split()[5] == "ok"


def test_improvement_beyond_tolerance_is_flagged_too(tmp_path, baseline, capsys):
    code, out, _ = run([current(tmp_path, fid=30.0), "--baseline", str(baseline)], capsys)
    assert code == 1 and line(out, "fid").split()[5] == "REGRESSION"


def test_perturbation_inside_tolerance_passes(tmp_path, baseline, capsys):
    # one example of 360 flips, FID within 10%, JFS within 3 sqrt(2) x its standard error
    cur = current(tmp_path, accuracy=0.95 - 1 / N, pgd20=0.40 + 2 / N, pgd20_energy=3 / N, fid=43.0, jfs=0.53,
                  ssim_nn=0.61, ece=dict(metric(0.04, bins=BINS)))
    code, out, err = run([cur, "--baseline", str(baseline)], capsys)
    assert code == 0, out + err
    assert "0 regression(s)" in out


def test_default_tolerances_follow_sampling_error():
    tol, _ = check.default_tolerance("accuracy", Result(0.95, n=N))
    p = (0.95 * N + 1) / (N + 2)
    assert tol == pytest.approx(3 * math.sqrt(2) * math.sqrt(p * (1 - p) / N))
    assert check.default_tolerance("accuracy", Result(0.95, n=4 * N))[0] == pytest.approx(tol / 2, rel=0.02)
    assert 0.005 < check.default_tolerance("pgd20", Result(0.0, n=N))[0] < 0.02  # a few examples at p = 0
    assert check.default_tolerance("fid", Result(40.0, n=100))[0] == pytest.approx(4.0)
    assert check.default_tolerance("jfs", Result(0.5, 0.01, 200))[0] == pytest.approx(3 * math.sqrt(2) * 0.01)
    assert check.default_tolerance("jfs", Result(0.5, None, 1))[0] == pytest.approx(0.05)
    ece = check.default_tolerance("ece", Result(0.03, n=N, details={"bins": BINS}))[0]
    overall = check.default_tolerance("ece", Result(0.03, n=N))[0]  # no bins: worst case a = 0.5
    assert 0.01 < ece < overall
    assert check.default_tolerance("ssim_nn", Result(0.6, 0.001, 100))[0] == 0.02
    assert check.default_tolerance("ssim_nn", Result(0.6, 0.01, 100))[0] == pytest.approx(3 * math.sqrt(2) * 0.01)


def test_tolerance_option_overrides_default(tmp_path, baseline, capsys):
    cur = current(tmp_path, accuracy=0.90)
    code, out, _ = run([cur, "--baseline", str(baseline), "--tolerance", "accuracy=0.06"], capsys)
    assert code == 0 and line(out, "accuracy").split()[4:6] == ["0.06", "ok"]
    code, out, _ = run([cur, "--baseline", str(baseline), "--tolerance", "pgd20=0", "--tolerance", "accuracy=0.01"],
                       capsys)
    assert code == 1 and line(out, "pgd20").split()[5] == "ok"


def test_null_now_is_a_regression_missing_is_not(tmp_path, baseline, capsys):
    code, out, _ = run([current(tmp_path, jfs=dict(metric(None, reason="out of memory"))), "--baseline",
                        str(baseline)], capsys)
    assert code == 1 and "REGRESSION  (null now: out of memory)" in line(out, "jfs")
    code, out, _ = run([current(tmp_path, fid=None, is_mean=None), "--baseline", str(baseline)], capsys)
    assert code == 0 and line(out, "fid").split()[5] == "missing"
    assert "2 missing" in out


@pytest.mark.parametrize("what,expect", [
    ("eps", "run.config.eps (baseline 0.1, current 0.05)"),
    ("sha", "model.sha256 (baseline abababababababab..., current cdcdcdcdcdcdcdcd...)"),
    ("new-setting", "run.config.probes (baseline 16 (absent: its default), current 8)"),
])
def test_mismatched_settings_are_refused(tmp_path, baseline, capsys, what, expect):
    cur = {"eps": lambda: current(tmp_path, config=dict(CONFIG, eps=0.05)),
           "sha": lambda: current(tmp_path, sha="cd" * 32),
           "new-setting": lambda: current(tmp_path, config=dict(CONFIG, probes=8))}[what]()
    code, out, err = run([cur, "--baseline", str(baseline)], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: not compared: 1 setting(s) differ") and err.count("\n") == 1
    assert expect in err


@pytest.mark.parametrize("tol,expect", [
    ("accuracy:0.1", "expected NAME=ABS"), ("accuracy=abc", "is not a number"), ("accuracy=-1", ">= 0"),
    ("accuracy=nan", ">= 0"), ("bogus=0.1", "unknown metric 'bogus'"), ("=0.1", "expected NAME=ABS"),
])
def test_bad_tolerance_exit_2(tmp_path, baseline, capsys, tol, expect):
    code, out, err = run([current(tmp_path), "--baseline", str(baseline), "--tolerance", tol], capsys)
    assert code == 2 and err.startswith("error: --tolerance") and expect in err and err.count("\n") == 1


def test_design_metric_names_are_valid_tolerances_even_if_not_run(tmp_path, baseline, capsys):
    code, _, err = run([current(tmp_path), "--baseline", str(baseline), "--tolerance", "denoise_psnr=1"], capsys)
    assert code == 0, err


@pytest.mark.parametrize("case,expect", [
    ("other-schema", "schema 2"), ("corrupt", "not valid JSON"), ("missing", "no such file"),
    ("list", "schema 'list'"),
])
def test_bad_baseline_exit_2(tmp_path, capsys, case, expect):
    bad = tmp_path / "bad.json"
    if case == "other-schema":
        doc = json.loads((make_run(tmp_path, "b", "jeat", base_metrics()) / "results.json").read_text())
        bad.write_text(json.dumps(dict(doc, schema=2)))
    elif case == "corrupt":
        bad.write_text('{"schema": 1, "metrics": {')
    elif case == "list":
        bad.write_text("[1, 2]")
    code, out, err = run([current(tmp_path), "--baseline", str(bad)], capsys)
    assert code == 2 and err.startswith("error: ") and expect in err and err.count("\n") == 1


def test_run_dir_without_results_exit_2(tmp_path, baseline, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run([str(tmp_path / "empty"), "--baseline", str(baseline)], capsys)
    assert code == 2 and "no results.json" in err
    code, _, err = run([str(tmp_path / "nowhere"), "--baseline", str(baseline)], capsys)
    assert code == 2 and "no such file or directory" in err


def test_fast_paths_and_newer_settings_at_their_defaults_are_compared(tmp_path, baseline, capsys):
    """A setting the baseline predates counts as its default; a fast path may differ (noted):
    checking a fast-path run against a plain baseline is how a fast path is checked."""
    cur = current(tmp_path, config=dict(CONFIG, probes=16, amp="bf16", channels_last=True))
    code, out, err = run([cur, "--baseline", str(baseline)], capsys)
    assert code == 0, err
    assert "fast paths differ (allowed): channels_last False -> True, amp 'off' -> 'bf16'" in out
