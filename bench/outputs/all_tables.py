"""Every table of a set of runs (``all_tables``; one run's: ``run_tables``): the paper's layouts of
``bench.outputs.paper_layout``, then those built here with its row helpers: the OOD detection
tables, the shift suite's two (``shift_tables``), one table per suite (the calibration suite in
three), the robustness curves of ``--eps-grid`` (one table per attack) and ``bench samples``' own."""

from __future__ import annotations

import math
import re

import pandas as pd

from bench.core.curve_data import curve_points
from bench.core.results import Results
from bench.metrics import registry, suites
from bench.outputs import shift_columns
from bench.outputs.paper_layout import Table, _better, _finish, _rows, _scale, header, table1, table2, table3
from bench.outputs.table_select import default

OOD_AUROC = re.compile(r"^ood_(adv_)?auroc_(pxgrad|px|py)_([a-z0-9_]+)$")  # bench.metrics.ood names


def ood_tables(runs: list[Results]) -> list[Table]:
    """OOD detection AUROC (rows: models, columns: set x score), clean (``ood``) and with the OOD
    points attacked (``ood_adv``); a table only where some run has its metrics.  No paper rows:
    the JEAT paper reports no OOD detection."""
    tables = []
    for adv, name, caption in (
            ("", "ood", "OOD detection AUROC (in-distribution positive; 0.5 is chance) per OOD set and score "
             "(px = logsumexp f = -E(x), py = max softmax, pxgrad = -||grad_x log p(x)||)."),
            ("adv_", "ood_adv", "Robust OOD detection AUROC: every OOD point pushed by L-inf PGD (eps) to raise "
             "the score under test.")):
        found = []
        for r in runs:
            for m in r.metrics:
                hit = OOD_AUROC.match(m)
                if hit and (hit.group(1) or "") == adv and m not in found:
                    found.append(m)
        if not found:
            continue
        cols = {f"{OOD_AUROC.match(m).group(3)} {OOD_AUROC.match(m).group(2)}": m for m in found}
        rows, notes = _rows(runs, cols)
        tables.append(_finish(Table(name, caption, pd.DataFrame(rows), cols, _better(cols), notes), runs))
    return tables


# a suite whose columns do not fit one page as one table: its parts, (name, caption, which metrics);
# a part's headers leave out what its caption says (" FGSM", " (TS)")
SUITE_PARTS = {"calibration": (
    ("calibration", "Calibration on the clean test points: expected (ECE, over equal-width bins), maximum (MCE) "
     "and adaptive (equal-mass bins) calibration error, negative log-likelihood and Brier score.",
     lambda m: not m.endswith("_fgsm") and "_ts" not in m and m != "temperature"),
    ("calibration_fgsm", "Calibration on the FGSM inputs (eps of the threat model): ECE, NLL, Brier score, MCE "
     "and adaptive ECE after the attack.", lambda m: m.endswith("_fgsm") and "_ts" not in m),
    ("calibration_ts", "Calibration after temperature scaling (Guo et al. 2017) on the clean test points: the "
     "fitted temperature T, and the ECE, NLL and Brier score of softmax(f(x)/T).",
     lambda m: m.endswith("_ts") or m == "temperature"),
    ("calibration_ts_fgsm", "Calibration after temperature scaling on the FGSM inputs: the ECE, NLL and Brier "
     "score of softmax(f(x)/T), T fitted on clean points.", lambda m: m.endswith("_ts_fgsm")))}
PART_DROPS = (" FGSM", " (TS)")


def _part_header(column: str, name: str, suite: str) -> str:
    """A part's header without what its caption says (``ECE (TS) FGSM (%)`` -> ``ECE (%)``)."""
    if name == suite or suite not in SUITE_PARTS:
        return column
    for drop in PART_DROPS:
        column = column.replace(drop, "")
    return column


def suite_tables(runs: list[Results]) -> list[Table]:
    """One table per suite, named after it (a suite in ``SUITE_PARTS``: one per part), of the
    metrics that declare a ``column`` (bench.metrics.Metric) and that some run holds: a newly
    registered metric's table, with no code here.  Headers carry the unit (``header``).  No
    paper rows."""
    tables = []
    for suite in (s for s in suites.names() if s != shift_columns.SUITE):  # shift_tables lays it out
        cols = {}
        for sp in (sp for g in suites.groups_for([suite], runnable=False) for sp in g.specs if sp.column):
            held = sorted({m for r in runs for m in r.metrics if sp.matches(m)})
            if len(held) == 1:  # a pattern only where it names one metric (bench.metrics.adaptive)
                cols[header(sp.column, held[0])] = held[0]
        parts = SUITE_PARTS.get(suite, ((suite, f"The {suite} suite.", lambda m: True),))
        for name, caption, takes in parts:
            part = {_part_header(c, name, suite): m for c, m in cols.items() if takes(m)}
            if part:
                rows, notes = _rows(runs, part)
                table = Table(name, caption, pd.DataFrame(rows), part, _better(part), notes)
                tables.append(_spread(_finish(table, runs), runs))
    return tables


def _spread(t: Table, runs: list[Results]) -> Table:
    """Each metric column's recorded std (in the column's scale; shown ``value ± std``) and n, as
    the columns ``COL std`` and ``COL n`` after the values (CSV only: the text tables show the std
    in the cell and n in the context)."""
    for col, m in t.columns.items():
        std, n = [], []
        for i, r in enumerate(runs):
            res = r.metrics.get(m)
            held = res is not None and res.value is not None
            std.append(res.std * _scale(m) if held and isinstance(res.std, int | float) else math.nan)
            n.append(float(res.n) if held and res.n else math.nan)
            if not math.isnan(std[-1]):
                t.stds[(i, col)] = std[-1]
        t.df[f"{col} std"], t.df[f"{col} n"] = std, n
    return t


SHIFT_CAPTION = ("Accuracy (%) under each common corruption (the mean over its severities; bench run --suite shift), "
                 "their mean, and the mean corruption error mCE and the relative mCE (Hendrycks and Dietterich "
                 "2019: errors relative to a reference model's, in %; lower is better).")
SHIFT_CALIBRATION_CAPTION = ("Calibration and energy under shift: accuracy (%), ECE and the AUROC of the energy score "
                             "-E(x) telling the clean points from the corrupted ones (AUROC E), at each corruption "
                             "severity (s1-s5, the mean over the corruptions; s0: the clean test points).")


def shift_tables(runs: list[Results]) -> list[Table]:
    """The shift suite's two tables (``bench.outputs.shift_columns`` names their metrics), only
    where some run holds a shift metric: ``shift``, a column per corruption (in the runs' order)
    then the mean, mCE and relative mCE; ``shift_calibration``, accuracy, ECE and energy AUROC per
    severity (0: clean).  No paper rows."""
    if not shift_columns.held(runs):
        return []
    tables = []
    main = {**shift_columns.corruption_columns(runs), **dict(shift_columns.SUMMARY)}
    by_severity = {f"{q} s{k}": m for q, k, m in shift_columns.severity_columns(runs)}
    for name, caption, cols in (("shift", SHIFT_CAPTION, main),
                                ("shift_calibration", SHIFT_CALIBRATION_CAPTION, by_severity)):
        cols = {header(c, m): m for c, m in cols.items()}
        if not cols:
            continue
        rows, notes = _rows(runs, cols)
        tables.append(_spread(_finish(Table(name, caption, pd.DataFrame(rows), cols, _better(cols), notes), runs),
                              runs))
    return tables


def curve_tables(runs: list[Results]) -> list[Table]:
    """One table per attack of the robustness curves (``--eps-grid``): rows the runs, a column per
    radius (eps 0: clean accuracy), each cell the robust accuracy +- its standard error."""
    tables = []
    for attack, pts in curve_points(runs).items():
        cols = {f"eps {eps:.6g}": m for eps, m in pts.items()}
        rows, notes = _rows(runs, cols)
        caption = (f"Robustness curve of {attack}: accuracy (%) against the attack radius eps in the run's norm "
                   "(bench run --eps-grid; eps 0 is the clean accuracy of the attack's points); the threat model "
                   "column gives the norm and the single eps of the other tables.")
        tables.append(_spread(_finish(Table(f"curve_{attack}", caption, pd.DataFrame(rows), cols, _better(cols),
                                            notes), runs), runs))
    return tables


def samples_table(runs: list[Results]) -> list[Table]:
    """``bench samples``' own table: every declared column among the metrics of the runs that
    ``bench samples`` wrote (``run.command``), in the order of its record; none without such a run."""
    mine = [r for r in runs if r.run.get("command") == "samples"]
    cols = {}
    for r in mine:
        for m in r.metrics:
            spec = registry.spec(m)
            if spec is not None and spec.column and not spec.is_pattern:
                cols.setdefault(spec.column, m)
    if not cols:
        return []
    rows, notes = _rows(mine, cols)
    caption = "Sample quality of submitted images (bench samples): " + ", ".join(cols) + "."
    return [_spread(_finish(Table("samples", caption, pd.DataFrame(rows), cols, _better(cols), notes), mine), mine)]


def all_tables(runs: list[Results]) -> list[Table]:
    return ([table1(runs), table2(runs), table3(runs)] + ood_tables(runs) + shift_tables(runs) + suite_tables(runs)
            + curve_tables(runs) + samples_table(runs))


def run_tables(res: Results) -> list[Table]:
    """The tables of one run that hold any of its metrics, without the columns it does not hold and
    with the paper's rows only on the paper's data sets (``table_select.default``)."""
    return default(all_tables([res]))
