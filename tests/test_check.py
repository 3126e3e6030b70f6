"""`bench check DIR --baseline FILE`: tolerances from sampling error, settings must match, exit codes;
`--exact` on one platform; what cannot be checked says so; JUnit and Markdown for CI."""

import copy
import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from bench.cli import main
from bench.inputs import zoo
from bench.metrics import Result
from bench.outputs import check_rules
from tests.test_tables import CONFIG, make_run, metric

PLATFORM = {"machine": "x86_64", "system": "Linux", "python": "3.11.7", "torch": "2.14.1", "device": "cpu",
            "device_name": "AMD EPYC", "threads": 1}

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


def with_run(path, **run):
    """Add keys to a results.json's ``run`` record (e.g. ``platform``)."""
    path = path / "results.json" if path.is_dir() else path
    doc = json.loads(path.read_text())
    doc["run"].update(run)
    path.write_text(json.dumps(doc))
    return path


def current(tmp_path, config=None, sha="ab" * 32, name="current", **changes):
    m = base_metrics()
    for k, v in changes.items():
        if v is None:
            m.pop(k)
        elif isinstance(v, dict):
            m[k] = v
        else:
            m[k] = dict(m[k], value=v)
    return str(make_run(tmp_path, name, "jeat", m, sha=sha, config=config))


def run(args, capsys):
    """bench check; the tests of this file are of the statistical rules (tests/test_check_paired.py
    has the paired and exact ones), so --statistical unless they ask for --exact or --paired."""
    args = [a for a in args if a != "--paired"] if "--paired" in args else \
        (args if "--exact" in args else [*args, "--statistical"])
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
    assert "ok  (null in both: not installed)" in line(out, "autoattack")
    assert out.splitlines()[-1] == "10 ok, 0 regression(s), 0 not checkable, 0 missing (statistical mode)"


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
    tol, _ = check_rules.statistical("accuracy", Result(0.95, n=N))
    p = (0.95 * N + 1) / (N + 2)
    assert tol == pytest.approx(3 * math.sqrt(2) * math.sqrt(p * (1 - p) / N))
    assert check_rules.statistical("accuracy", Result(0.95, n=4 * N))[0] == pytest.approx(tol / 2, rel=0.02)
    assert 0.005 < check_rules.statistical("pgd20", Result(0.0, n=N))[0] < 0.02  # a few examples at p = 0
    assert check_rules.statistical("fid", Result(40.0, n=100))[0] == pytest.approx(4.0)
    assert check_rules.statistical("jfs", Result(0.5, 0.01, 200))[0] == pytest.approx(3 * math.sqrt(2) * 0.01)
    assert check_rules.statistical("jfs", Result(0.5, None, 200))[0] == pytest.approx(0.05)
    ece = check_rules.statistical("ece", Result(0.03, n=N, details={"bins": BINS}))[0]
    overall = check_rules.statistical("ece", Result(0.03, n=N))[0]  # no bins: worst case a = 0.5
    assert 0.01 < ece < overall
    assert check_rules.statistical("ssim_nn", Result(0.6, 0.001, 100))[0] == 0.02
    assert check_rules.statistical("ssim_nn", Result(0.6, 0.01, 100))[0] == pytest.approx(3 * math.sqrt(2) * 0.01)


def test_tolerance_option_overrides_default(tmp_path, baseline, capsys):
    cur = current(tmp_path, accuracy=0.90)
    code, out, _ = run([cur, "--baseline", str(baseline), "--tolerance", "accuracy=0.06"], capsys)
    assert code == 0 and line(out, "accuracy").split()[4:6] == ["0.06", "ok"]
    code, out, _ = run([cur, "--baseline", str(baseline), "--tolerance", "pgd20=0", "--tolerance", "accuracy=0.01"],
                       capsys)
    assert code == 1 and line(out, "pgd20").split()[5] == "ok"


def test_null_in_one_run_is_a_regression_missing_is_not(tmp_path, baseline, capsys):
    code, out, _ = run([current(tmp_path, jfs=dict(metric(None, reason="out of memory"))), "--baseline",
                        str(baseline)], capsys)
    assert code == 1 and "REGRESSION  (null now: out of memory)" in line(out, "jfs")
    code, out, _ = run([current(tmp_path, autoattack=dict(metric(0.3))), "--baseline", str(baseline)], capsys)
    assert code == 1 and "REGRESSION  (a value now; baseline null: not installed)" in line(out, "autoattack")
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
    code, out, err = run([cur, "--baseline", str(baseline), "--paired"], capsys)  # the default mode
    assert code == 0, err
    assert "fast paths differ, so the statistical rules apply: channels_last False -> True, amp 'off' -> 'bf16'" in out
    assert out.rstrip().endswith("(statistical mode)")


# --- what statistical mode cannot bound says so -------------------------------------------------

def test_tolerances_wider_than_the_range_or_from_too_few_points_are_not_checkable(tmp_path, capsys):
    """The default landscape (4 images): a proportion's 3-SE band at n=4 is +-0.79, a mean's SE from
    4 points bounds nothing; before, center_is_min passed anywhere below 0.79."""
    base_m = {"accuracy": metric(0.95), "landscape_center_is_min": metric(0.0, 0.0, 4),
              "landscape_min_offset": metric(1.0, 0.13, 4), "landscape_flatness": metric(0.02, 0.005, 4)}
    base = make_run(tmp_path, "b", "jeat", base_m, sha="ab" * 32) / "results.json"
    cur_m = copy.deepcopy(base_m)
    cur_m["landscape_center_is_min"]["value"] = 0.75
    cur_m["landscape_min_offset"]["value"] = 0.1
    cur = make_run(tmp_path, "c", "jeat", cur_m, sha="ab" * 32)
    code, out, err = run([str(cur), "--baseline", str(base)], capsys)
    assert code == 0, err  # nothing regressed that could be bounded ...
    for name in ("landscape_center_is_min", "landscape_min_offset", "landscape_flatness"):
        assert "not checkable  (at n=4: fewer than 30 points" in line(out, name), line(out, name)
    assert line(out, "accuracy").split()[5] == "ok"
    assert out.splitlines()[-1] == "1 ok, 0 regression(s), 3 not checkable, 0 missing (statistical mode)"
    # enough points, but a band of half the range or more: the minimum's offset lies in [0, sqrt 2]
    tol, how = check_rules.statistical("landscape_min_offset", Result(1.0, 0.2, 30))
    assert tol is None and "the tolerance 0.849 spans half the metric's range" in how  # 3 sqrt(2) 0.2
    assert check_rules.statistical("landscape_min_offset", Result(1.0, 0.1, 30))[0] == pytest.approx(
        3 * math.sqrt(2) * 0.1)
    assert check_rules.statistical("autoattack", Result(0.5, n=100))[0] == pytest.approx(
        3 * math.sqrt(2) * math.sqrt(0.5 * 0.5 / 100))
    assert check_rules.statistical("autoattack", Result(0.5, n=20))[0] is None
    # the proportions and means other suites added: the same rules
    assert check_rules.statistical("pgd20_aa", Result(0.5, n=100))[0] == pytest.approx(
        3 * math.sqrt(2) * math.sqrt(0.5 * 0.5 / 100))
    assert check_rules.statistical("nll_ts_fgsm", Result(0.4, 0.02, 450))[0] == pytest.approx(3 * math.sqrt(2) * 0.02)
    assert check_rules.statistical("brier", Result(0.4, 0.3, 450))[0] is None  # 1.27: over half of [0, 2]


@pytest.mark.parametrize("name", ["kid_mean", "ood_auroc_px_uniform", "temperature"])
def test_unknown_metric_is_not_checkable_statistically_but_exact_compares_it(tmp_path, capsys, name):
    base_m = dict(base_metrics(), **{name: metric(0.5, 0.01, 450)})
    base = with_run(make_run(tmp_path, "b", "jeat", base_m, sha="ab" * 32), platform=PLATFORM)
    moved = dict(base_m, **{name: metric(0.9, 0.01, 450)})  # a huge move: still no tolerance is invented
    cur = with_run(make_run(tmp_path, "c", "jeat", moved, sha="ab" * 32), platform=PLATFORM)
    code, out, _ = run([str(cur), "--baseline", str(base)], capsys)
    assert code == 0 and "not checkable  (no statistical tolerance is defined" in line(out, name)
    code, out, _ = run([str(cur), "--baseline", str(base), "--exact"], capsys)
    assert code == 1 and line(out, name).split()[5] == "REGRESSION"
    code, out, _ = run([str(cur), "--baseline", str(base), "--tolerance", f"{name}=0.5"], capsys)
    assert code == 0 and line(out, name).split()[4:6] == ["0.5", "ok"]


# --- exact mode ---------------------------------------------------------------------------------

@pytest.fixture
def exact_pair(tmp_path):
    """A baseline and an identical run, both recording the same platform."""
    base = with_run(make_run(tmp_path, "baseline", "jeat", base_metrics(), sha="ab" * 32), platform=PLATFORM)
    return base, with_run(Path(current(tmp_path)), platform=PLATFORM)


def test_exact_mode_passes_identical_and_fails_beyond_1e6_relative(tmp_path, exact_pair, capsys):
    base, cur = exact_pair
    code, out, err = run([str(cur), "--baseline", str(base), "--exact"], capsys)
    assert code == 0, err
    assert out.splitlines()[-1] == "10 ok, 0 regression(s), 0 not checkable, 0 missing (exact mode)"
    assert "exact (1e-06 relative)" in line(out, "fid")
    doc = json.loads(cur.read_text())
    doc["metrics"]["fid"]["value"] = 40.0 * (1 + 2e-7)  # float noise: passes
    doc["metrics"]["jfs"]["value"] = 0.5 * (1 + 5e-6)  # a change in the 6th digit: fails
    doc["metrics"]["accuracy"]["value"] = 0.95 - 1 / 4500  # one example in 4,500 (far inside 3 SE)
    cur.write_text(json.dumps(doc))
    code, out, err = run([str(cur), "--baseline", str(base), "--exact"], capsys)
    assert code == 1
    assert line(out, "fid").split()[5] == "ok"
    assert [r.split()[0] for r in out.splitlines() if "REGRESSION" in r] == ["accuracy", "jfs"]
    assert err == "regression: accuracy, jfs\n"
    code, _, _ = run([str(cur), "--baseline", str(base)], capsys)
    assert code == 0  # the statistical mode cannot see these (tests/test_check_paired.py: the paired mode can)


def test_runs_record_their_platform(tmp_path):
    import platform

    import torch

    from bench.core import results
    rec = results.platform_record("cpu")
    assert rec["threads"] == torch.get_num_threads() and rec["torch"] == torch.__version__
    assert rec["python"] == platform.python_version() and rec["machine"] == platform.machine()
    assert rec["device"] == "cpu" and rec["device_name"]


# --- output for CI systems -------------------------------------------------------------------

def test_junit_and_markdown_outputs(tmp_path, baseline, capsys):
    base_m = dict(base_metrics(), landscape_center_is_min=metric(0.0, 0.0, 4))
    base = make_run(tmp_path, "b", "jeat", base_m, sha="ab" * 32) / "results.json"
    cur_m = dict(base_m, accuracy=metric(0.90), is_mean=None)
    cur_m.pop("is_mean")
    cur = make_run(tmp_path, "c", "jeat", cur_m, sha="ab" * 32)
    junit, md = tmp_path / "report.xml", tmp_path / "summary.md"
    md.write_text("# earlier step\n")
    code, out, _ = run([str(cur), "--baseline", str(base), "--junit", str(junit), "--markdown", str(md)], capsys)
    assert code == 1
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert set(cases) == set(base_m)  # one test case per metric
    assert suite.get("tests") == str(len(base_m)) and suite.get("failures") == "1" and suite.get("skipped") == "2"
    assert [n for n, c in cases.items() if c.find("failure") is not None] == ["accuracy"]
    assert "current 0.9" in cases["accuracy"].find("failure").get("message")
    assert cases["landscape_center_is_min"].find("skipped").get("message").startswith("not checkable: at n=4")
    assert cases["is_mean"].find("skipped").get("message") == "missing: not in this run"
    assert all(c.find("failure") is None and c.find("skipped") is None for n, c in cases.items()
               if n not in ("accuracy", "landscape_center_is_min", "is_mean"))
    assert cases["accuracy"].get("classname") == f"bench.outputs.check.digits-jeat ({cur})"  # model and run folder
    text = md.read_text()
    assert text.startswith(f"# earlier step\n### bench check digits-jeat ({cur}): 1 regression(s)\n")  # appended
    rows = [x for x in text.splitlines() if x.startswith("| ")]
    assert rows[:2] == ["| metric | baseline | current | delta | tolerance | status | note |",
                        "| --- | ---: | ---: | ---: | ---: | --- | --- |"]
    assert len(rows) == 2 + len(base_m)
    acc = next(x for x in rows if x.startswith("| accuracy "))
    assert acc.split(" | ")[1:6] == ["0.95", "0.9", "-0.05", "0.04987", "**REGRESSION**"]
    assert "8 ok, 1 regression(s), 1 not checkable, 1 missing (statistical mode)" in text


def test_refused_check_still_writes_junit_and_markdown(tmp_path, baseline, capsys):
    junit, md = tmp_path / "r.xml", tmp_path / "s.md"
    cur = current(tmp_path, config=dict(CONFIG, eps=0.05))
    code, _, err = run([cur, "--baseline", str(baseline), "--junit", str(junit), "--markdown", str(md)], capsys)
    assert code == 2 and err.count("\n") == 1
    root = ET.parse(junit).getroot()
    assert root.get("errors") == "1" and "run.config.eps" in root.find("testsuite/testcase/error").get("message")
    assert md.read_text().startswith(f"### bench check digits-jeat ({cur}): not compared\n")


def test_unwritable_junit_path_exit_2(tmp_path, baseline, capsys):
    code, _, err = run([current(tmp_path), "--baseline", str(baseline), "--junit",
                        str(tmp_path / "no" / "such" / "dir" / "r.xml")], capsys)
    assert code == 2 and err.startswith("error: cannot write") and err.count("\n") == 1


def test_example_workflow_calls_real_options_and_files():
    """.github/workflows/regression.yml (an example users copy): every `bench` option it passes
    exists, its cases and baselines are shipped, and it checks in the portable --exact --strict way."""
    from bench.cli import cli
    from tests.test_regression import CASES
    text = (Path(__file__).resolve().parents[1] / ".github" / "workflows" / "regression.yml").read_text()
    joined = text.replace("\\\n", " ")
    for cmd in ("run", "check"):
        (call,) = [x for x in joined.splitlines() if f"bench {cmd} " in x and not x.lstrip().startswith("#")]
        opts = set(re.findall(r"\s(--[a-z][a-z-]*)", call))
        known = {o for p in cli.commands[cmd].params for o in p.opts}
        assert opts and opts <= known, (cmd, opts - known)
    assert "--exact --strict" in joined and "--junit" in joined and '--markdown "$GITHUB_STEP_SUMMARY"' in joined
    methods = re.search(r"method: \[([a-z, ]+)\]", text)[1].split(", ")
    assert sorted(methods) == sorted(["normal", "noise", "at", "prejeat", "jeat", "jem"])
    for m in methods:
        assert f"digits-{m}" in CASES and zoo.released_path(m).is_file()
        assert (zoo.results_dir() / "baseline" / f"digits-{m}.json").is_file()
        for opt in CASES[f"digits-{m}"]["args"][::2]:
            assert opt in {o for p in cli.commands["run"].params for o in p.opts}
