"""`bench compare A B [C ...]`: models on the same points, a paired test per metric (McNemar's
exact test on the discordant points, the paired standard error of per-point means, a paired
bootstrap of ECE, independent errors where nothing is paired), Holm across them, five formats."""

import csv
import io
import json
import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from scipy.stats import binomtest, norm, ttest_rel

from bench.cli import main
from bench.core import outcomes
from bench.core.binned_calibration import expected_calibration_error
from bench.outputs import compare, compare_output
from tests.test_tables import CONFIG, make_run, metric

N = 400
RNG = np.random.default_rng(7)
ROBUST_A = RNG.random(N) < 0.62
ROBUST_B = np.where(RNG.random(N) < 0.25, RNG.random(N) < 0.35, ROBUST_A)  # B loses robustness
CORRECT = RNG.random(N) < 0.8
CONF_A = np.clip(0.8 + 0.1 * RNG.normal(size=N), 0.1, 1.0)
CONF_B = np.clip(CONF_A + 0.05 * RNG.normal(size=N), 0.1, 1.0)
NLL_A = RNG.gamma(2.0, 0.3, N)
NLL_B = NLL_A + RNG.normal(0.05, 0.1, N)


def share(bits, name="x"):
    return metric(float(np.mean(bits)), math.sqrt(np.mean(bits) * (1 - np.mean(bits)) / N), N,
                  **{outcomes.KEY: outcomes.pack(bits, name)})


def records(conf, nll, robust, fid=40.0):
    conf32, nll32 = conf.astype(np.float32), nll.astype(np.float32)
    ece = expected_calibration_error(conf32.astype(np.float64), CORRECT, 20)[0]
    return {"accuracy": share(CORRECT), "pgd20": share(robust),
            "ece": metric(ece, None, N, n_bins=20, **{outcomes.KEY: outcomes.pack(CORRECT, "c"),
                                                      outcomes.VALUES_KEY: outcomes.pack_values(conf32, "conf")}),
            "nll": metric(float(nll32.astype(np.float64).mean()), float(nll.std(ddof=1) / math.sqrt(N)), N,
                          **{outcomes.VALUES_KEY: outcomes.pack_values(nll32, "nll")}),
            "fid": metric(fid, 1.5, 100)}


@pytest.fixture
def runs(tmp_path):
    a = make_run(tmp_path, "at", "at", records(CONF_A, NLL_A, ROBUST_A), sha="aa" * 32)
    b = make_run(tmp_path, "ft", "at", records(CONF_B, NLL_B, ROBUST_B, fid=46.0), sha="bb" * 32)
    return a, b


def test_a_share_of_points_is_mcnemars_exact_test(runs):
    comp = compare.compare_runs(list(runs))
    (tests,) = comp.tests.values()
    t = {x.metric: x for x in tests}["pgd20"]
    b, c = int(np.sum(ROBUST_A & ~ROBUST_B)), int(np.sum(~ROBUST_A & ROBUST_B))
    assert (t.only_a, t.only_b) == (b, c) and b > c
    assert t.test == compare.MCNEMAR and t.p == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-12)
    assert t.diff == pytest.approx(ROBUST_B.mean() - ROBUST_A.mean())
    assert compare_output.verdict(t, 0.05) == "B worse"
    acc = {x.metric: x for x in tests}["accuracy"]  # the same points correct in both: nothing differs
    assert (acc.only_a, acc.only_b, acc.p) == (0, 0, 1.0)
    assert compare_output.verdict(acc, 0.05) == "no significant difference"


def test_a_mean_over_points_has_the_paired_standard_error(runs):
    (tests,) = compare.compare_runs(list(runs)).tests.values()
    t = {x.metric: x for x in tests}["nll"]
    a32, b32 = NLL_A.astype(np.float32).astype(float), NLL_B.astype(np.float32).astype(float)
    res = ttest_rel(b32, a32)
    assert t.test == compare.PAIRED_MEAN
    assert t.diff / t.se == pytest.approx(res.statistic, rel=1e-6)
    assert t.p == pytest.approx(2 * norm.sf(abs(res.statistic)), rel=1e-5)


def test_ece_is_bootstrapped_over_the_same_points(runs):
    (tests,) = compare.compare_runs(list(runs), seed=1).tests.values()
    t = {x.metric: x for x in tests}["ece"]
    ece_a = expected_calibration_error(CONF_A.astype(np.float32).astype(float), CORRECT, 20)[0]
    ece_b = expected_calibration_error(CONF_B.astype(np.float32).astype(float), CORRECT, 20)[0]
    assert t.test == compare.BOOTSTRAP and t.diff == pytest.approx(ece_b - ece_a, rel=1e-9)
    assert 0 < t.se < 0.05 and "seed 1" in t.note
    again = {x.metric: x for x in next(iter(compare.compare_runs(list(runs), seed=1).tests.values()))}["ece"]
    assert again.se == t.se  # seeded


def test_no_per_point_record_falls_back_to_independent_errors_and_says_so(runs):
    (tests,) = compare.compare_runs(list(runs)).tests.values()
    t = {x.metric: x for x in tests}["fid"]
    se = math.sqrt(1.5 ** 2 + 1.5 ** 2)
    assert t.test == compare.INDEPENDENT and t.se == pytest.approx(se)
    assert t.p == pytest.approx(2 * norm.sf(6.0 / se)) and "independent" in t.note
    assert compare_output.verdict(t, 0.05) == "B worse"  # FID: lower is better


def test_holm_runs_over_every_test(runs, tmp_path):
    c = make_run(tmp_path, "c", "at", records(CONF_A, NLL_A, ROBUST_A), sha="cc" * 32)
    comp = compare.compare_runs([*runs, c])
    ps = [t.p for ts in comp.tests.values() for t in ts if t.p is not None]
    m = len(ps)
    assert m == 10
    smallest = next(t for ts in comp.tests.values() for t in ts if t.p == min(ps))
    assert smallest.p_holm == pytest.approx(min(1.0, m * min(ps)))


def test_refuses_runs_that_are_not_the_same_evaluation(runs, tmp_path, capsys):
    other = make_run(tmp_path, "eps", "at", records(CONF_B, NLL_B, ROBUST_B), sha="bb" * 32,
                     config=dict(CONFIG, eps=0.05))
    assert main(["compare", str(runs[0]), str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: not compared") and "run.config.eps (A 0.1, B 0.05)" in err
    assert main(["compare", str(runs[0])]) == 2 and "at least two runs" in capsys.readouterr().err


def test_cli_text_and_the_four_files(runs, tmp_path, capsys):
    files = {k: tmp_path / f"out.{k}" for k in ("md", "csv", "tex", "xml")}
    code = main(["compare", *map(str, runs), "--markdown", str(files["md"]), "--csv", str(files["csv"]),
                 "--latex", str(files["tex"]), "--junit", str(files["xml"])])
    out = capsys.readouterr().out
    assert code == 0
    pgd = next(line for line in out.splitlines() if line.startswith("pgd20 "))
    b, c = int(np.sum(ROBUST_A & ~ROBUST_B)), int(np.sum(~ROBUST_A & ROBUST_B))
    assert f"  {b}  " in pgd and f"  {c}  " in pgd and "McNemar exact" in pgd and pgd.endswith("B worse")
    assert "| pgd20 |" in files["md"].read_text() and "**B worse**" in files["md"].read_text()
    rows = list(csv.DictReader(io.StringIO(files["csv"].read_text())))
    row = next(r for r in rows if r["metric"] == "pgd20")
    assert (int(row["only_a"]), int(row["only_b"])) == (b, c)
    assert float(row["p"]) == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-12)
    tex = files["tex"].read_text()
    assert "\\begin{tabular}" in tex and "pgd20" in tex and "\\textbf{" in tex
    suite = ET.parse(files["xml"]).getroot().find("testsuite")
    failed = [case.get("name") for case in suite.iter("testcase") if case.find("failure") is not None]
    assert "pgd20" in failed and "accuracy" not in failed and int(suite.get("failures")) == len(failed)


def test_metrics_selects_by_wildcard(runs, capsys):
    comp = compare.compare_runs(list(runs), metrics=("pgd*,nll",))
    assert [t.metric for t in next(iter(comp.tests.values()))] == ["pgd20", "nll"]
    assert main(["compare", *map(str, runs), "--metrics", "ood_*"]) == 2
    assert "matches no metric" in capsys.readouterr().err


def test_the_same_weights_from_another_file_are_one_model(runs, tmp_path):
    """weights_sha256 is the identity; a bench.evaluate run (the state dict's digest as sha256) and a
    bench run of the file compare (and check) as the same model."""
    doc = json.loads((runs[0] / "results.json").read_text())
    doc["model"]["weights_sha256"] = "ee" * 32
    (runs[0] / "results.json").write_text(json.dumps(doc))
    doc["model"].update(sha256="ff" * 32)
    doc["run"]["config"]["normalize"] = "0.5/0.5"
    other = tmp_path / "evaluate"
    other.mkdir()
    (other / "results.json").write_text(json.dumps(doc))
    assert main(["check", str(other), "--baseline", str(runs[0] / "results.json")]) == 0
