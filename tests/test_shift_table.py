"""The shift suite's tables (``all_tables.shift_tables``, names in ``bench.outputs.shift_columns``)
from hand-made results.json records: a column per corruption in the data's order, mean, mCE and
relative mCE, and calibration and energy AUROC per severity; only for runs that hold shift
metrics; and ``bench compare`` of a per-severity accuracy with per-point bits (McNemar)."""

import csv
import math

import numpy as np
import pytest
from scipy.stats import binomtest

from bench.cli import main
from bench.core import outcomes, results
from bench.core.metric_facts import PAIRS, Metric
from bench.metrics import registry
from bench.outputs import all_tables, compare, table_files
from bench.outputs.table_select import Choice
from bench.outputs.table_text import cells
from tests.test_tables import make_run, metric

CORRUPTIONS = ("motion_blur", "gaussian_noise", "jpeg_compression")  # not alphabetical: the data's order
N = 200


def _facts(name: str) -> Metric | None:
    """The facts the shift suite declares for its names (accuracies and corruption errors shown in %,
    ECE as the clean ece is, AUROC a proportion), for a branch where no group declares them yet."""
    if name.startswith("shift_acc_"):
        return Metric.proportion(name)
    if name.startswith("shift_ce_") or name in ("shift_mce", "shift_rmce"):
        return Metric(name, "ratio", False, "percent")
    if name.startswith("shift_ece_"):
        return Metric(name, "ECE", False, "percent", bounds=(0.0, 1.0))
    if name.startswith("shift_nll_"):
        return Metric(name, "nats", False)
    if name.startswith("shift_auroc_"):
        return Metric(name, "proportion", True, portable=PAIRS, bounds=(0.0, 1.0))
    return None


@pytest.fixture
def shift_facts(monkeypatch):
    """registry.spec answers for the shift names no registered group declares (a group that does
    declares them itself: its facts are used)."""
    real = registry.spec
    declared = registry.declared()

    def spec(name):
        if any(sp.matches(name) for sp in declared):
            return real(name)
        return _facts(name) or real(name)

    monkeypatch.setattr(registry, "spec", spec)


def _bits(p: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random(N) < p


def _share(bits: np.ndarray, what: str) -> dict:
    p = float(bits.mean())
    return metric(p, math.sqrt(p * (1 - p) / N), N, **{outcomes.KEY: outcomes.pack(bits, what)})


def shift_metrics(acc: dict[str, float], seed: int) -> dict:
    """A shift run's records: per corruption and severity a share of N points with its bits, the
    means, the corruption errors (error over a reference error of 0.5) and per-severity ECE, NLL and
    AUROC."""
    m = {"accuracy": _share(_bits(0.95, seed), "correct clean"),
         "ece": metric(0.031, None, N)}
    per = {}
    for j, c in enumerate(CORRUPTIONS):
        for k in range(1, 6):
            per[(c, k)] = _bits(acc[c] - 0.05 * k, seed + 10 * j + k)
            m[f"shift_acc_{c}_{k}"] = _share(per[(c, k)], f"correct {c} {k}")
    for c in CORRUPTIONS:
        vals = [float(per[(c, k)].mean()) for k in range(1, 6)]
        m[f"shift_acc_{c}"] = metric(float(np.mean(vals)), 0.01, 5 * N)
        m[f"shift_ce_{c}"] = metric((1 - float(np.mean(vals))) / 0.5, None, 5 * N)
    for k in range(1, 6):
        m[f"shift_acc_s{k}"] = metric(float(np.mean([per[(c, k)].mean() for c in CORRUPTIONS])), 0.01, 3 * N)
        m[f"shift_ece_s{k}"] = metric(0.04 + 0.01 * k, None, 3 * N)
        m[f"shift_nll_s{k}"] = metric(0.3 + 0.1 * k, 0.02, 3 * N)
        m[f"shift_auroc_energy_s{k}"] = metric(0.5 + 0.08 * k, 0.01, 3 * N)
        m[f"shift_auroc_msp_s{k}"] = metric(0.5 + 0.07 * k, 0.01, 3 * N)
    m["shift_acc_mean"] = metric(float(np.mean([m[f"shift_acc_{c}"]["value"] for c in CORRUPTIONS])), 0.005, 15 * N)
    m["shift_mce"] = metric(float(np.mean([m[f"shift_ce_{c}"]["value"] for c in CORRUPTIONS])), None, 15 * N)
    m["shift_rmce"] = metric(0.9 + seed / 100, None, 15 * N)
    return m


@pytest.fixture
def two(tmp_path):
    a = make_run(tmp_path, "run-a", "jeat", shift_metrics({"motion_blur": 0.8, "gaussian_noise": 0.9,
                                                            "jpeg_compression": 0.85}, 1), suites=("shift",))
    b = make_run(tmp_path, "run-b", "at", shift_metrics({"motion_blur": 0.8, "gaussian_noise": 0.5,
                                                          "jpeg_compression": 0.84}, 2), suites=("shift",))
    return a, b


def _table(built, name):
    found = [t for t in built.tables if t.name == name]
    assert len(found) == 1, [t.name for t in built.tables]
    return found[0]


def test_a_column_per_corruption_in_the_data_order_then_mean_mce_rmce(two, tmp_path, shift_facts):
    built = table_files.build(list(two), tmp_path / "out")
    t = _table(built, "shift")
    assert list(t.columns.values()) == [f"shift_acc_{c}" for c in CORRUPTIONS] + \
        ["shift_acc_mean", "shift_mce", "shift_rmce"]
    assert list(t.columns) == [f"{c} (%)" for c in CORRUPTIONS] + ["mean (%)", "mCE (%)", "rel. mCE (%)"]
    docs = [results.read(d) for d in two]
    for i, doc in enumerate(docs):  # every cell is the value written, in percent
        for col, m in t.columns.items():
            assert t.df.loc[i, col] == pytest.approx(100 * doc.metrics[m].value, rel=1e-12)
    assert t.df.loc[1, "mCE (%)"] == pytest.approx(100 * (1 - docs[1].metrics["shift_acc_mean"].value) / 0.5)
    # the CSV holds the same numbers (six significant digits)
    rows = list(csv.DictReader((tmp_path / "out" / "shift.csv").open()))
    assert [r["Model"] for r in rows] == ["run-a", "run-b"]
    assert float(rows[0]["gaussian_noise (%)"]) == pytest.approx(100 * docs[0].metrics["shift_acc_gaussian_noise"].value,
                                                                  rel=1e-5)
    # bold: gaussian_noise 0.9-ish vs 0.5-ish (se 0.01 each) is significantly best; motion_blur equal is not
    body, _ = cells(t)
    cols = list(t.columns)
    gauss, motion = cols.index("gaussian_noise (%)"), cols.index("motion_blur (%)")
    assert body[0][gauss].bold and not body[1][gauss].bold
    assert not body[0][motion].bold and not body[1][motion].bold
    assert body[0][cols.index("mCE (%)")].bold is False  # no standard error recorded: never bold


def test_calibration_and_energy_under_shift_by_severity(two, tmp_path, shift_facts):
    built = table_files.build(list(two), tmp_path / "out")
    t = _table(built, "shift_calibration")
    want = ["accuracy"] + [f"shift_acc_s{k}" for k in range(1, 6)] + ["ece"] + \
        [f"shift_ece_s{k}" for k in range(1, 6)] + [f"shift_auroc_energy_s{k}" for k in range(1, 6)]
    assert list(t.columns.values()) == want
    assert list(t.columns)[:2] == ["acc s0 (%)", "acc s1 (%)"] and list(t.columns)[-1] == "AUROC E s5"
    doc = results.read(two[1])
    for col, m in t.columns.items():
        scale = 1.0 if m.startswith("shift_auroc") else 100.0  # AUROC a proportion; accuracy and ECE in %
        assert t.df.loc[1, col] == pytest.approx(scale * doc.metrics[m].value, rel=1e-12), col


def test_latex_escapes_the_corruption_labels_and_the_report_lists_the_tables(two, tmp_path, shift_facts):
    built = table_files.build(list(two), tmp_path / "out")
    tex = (tmp_path / "out" / "shift.tex").read_text()
    for c in CORRUPTIONS:
        assert c.replace("_", r"\_") in tex
        assert c not in tex.replace(c.replace("_", r"\_"), "")  # never an unescaped underscore
    assert r"\label{tab:shift}" in tex
    page = built.report.read_text()
    assert 'id="shift"' in page and 'id="shift_calibration"' in page
    assert "gaussian_noise (%)" in (tmp_path / "out" / "shift.md").read_text()


def test_a_run_without_shift_metrics_writes_no_shift_table(tmp_path, shift_facts):
    plain = make_run(tmp_path, "plain", "jeat", {"accuracy": metric(0.9, 0.01), "ece": metric(0.03, None)},
                     suites=("robust", "calibration"))
    run = results.read(plain)
    assert not [t for t in all_tables.all_tables([run]) if t.name.startswith("shift")]
    paths = table_files.write_run_tables(run, tmp_path / "tables")
    assert paths and not [p for p in paths if p.name.startswith("shift")]
    # bench run's tables of a shift run: both, in OUT/tables
    shifted = results.read(make_run(tmp_path, "s", "jeat", shift_metrics(dict.fromkeys(CORRUPTIONS, 0.8), 3)))
    names = {p.name for p in table_files.write_run_tables(shifted, tmp_path / "s-tables")}
    assert {"shift.csv", "shift.tex", "shift.md", "shift_calibration.csv"} <= names


def test_columns_and_rows_choose_as_in_the_other_tables(two, tmp_path, shift_facts):
    built = table_files.build(list(two), tmp_path / "out",
                              choice=Choice(columns=["gaussian_noise", "shift_mce"], rows=["run-b=AT"]))
    assert [t.name for t in built.tables] == ["shift"]
    (t,) = built.tables
    assert list(t.columns) == ["gaussian_noise (%)", "mCE (%)"] and list(t.df["Model"]) == ["AT"]
    assert t.df.loc[0, "mCE (%)"] == pytest.approx(100 * results.read(two[1]).metrics["shift_mce"].value)


def test_undeclared_shift_names_are_plain_numbers(two, tmp_path, monkeypatch):
    """Where no group declares them, the table still holds them (plain floats, no unit, no best)."""
    real = registry.spec
    monkeypatch.setattr(registry, "spec", lambda name: Metric(name) if name.startswith("shift_") else real(name))
    t = _table(table_files.build(list(two), tmp_path / "out"), "shift")
    assert list(t.columns)[:3] == list(CORRUPTIONS) and not t.better
    assert t.df.loc[0, "motion_blur"] == pytest.approx(results.read(two[0]).metrics["shift_acc_motion_blur"].value)


def test_compare_tests_a_severity_accuracy_by_mcnemar(two, shift_facts):
    name = "shift_acc_gaussian_noise_3"
    comp = compare.compare_runs(list(two), metrics=[name])
    (tests,) = comp.tests.values()
    (t,) = tests
    a, b = _bits(0.9 - 0.15, 1 + 10 + 3), _bits(0.5 - 0.15, 2 + 10 + 3)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    assert t.test == compare.MCNEMAR and (t.only_a, t.only_b) == (only_a, only_b)
    assert t.p == pytest.approx(binomtest(only_a, only_a + only_b, 0.5).pvalue, rel=1e-12)
    assert t.diff == pytest.approx(b.mean() - a.mean())


def test_bench_table_prints_and_writes_them_with_no_paper_rows(two, tmp_path, capsys, shift_facts):
    out = tmp_path / "tables"
    assert main(["table", *map(str, two), "--out", str(out), "--with-paper", "--columns", "shift_acc_mean,acc s0"]) == 0
    printed = capsys.readouterr().out
    for name in ("shift", "shift_calibration"):
        md = (out / f"{name}.md").read_text()
        assert f"**{name}**" in printed and md in printed and "paper:" not in md
    assert "| mean (%) |" in (out / "shift.md").read_text()
    assert "| acc s0 (%) |" in (out / "shift_calibration.md").read_text()
