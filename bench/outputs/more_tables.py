"""Every table of a set of runs (``all_tables``; one run's: ``run_tables``): the paper's layouts and
the suite and OOD tables of ``bench.outputs.paper_tables``, then those built here with its row
helpers, the robustness curves of ``--eps-grid`` (one table per attack) and ``bench samples``' own."""

from __future__ import annotations

import pandas as pd

from bench.core.curve_data import curve_points
from bench.core.results import Results
from bench.metrics import registry
from bench.outputs.paper_tables import (
    Table,
    _better,
    _finish,
    _rows,
    _spread,
    ood_tables,
    suite_tables,
    table1,
    table2,
    table3,
)


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
    return ([table1(runs), table2(runs), table3(runs)] + ood_tables(runs) + suite_tables(runs) + curve_tables(runs)
            + samples_table(runs))


def run_tables(res: Results) -> list[Table]:
    """The tables of one run that hold any of its metrics (a table with none of ours is skipped)."""
    return [t for t in all_tables([res]) if any(m in res.metrics for m in t.columns.values())]
