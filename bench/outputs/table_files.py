"""Paper-style tables (Tables 1-3) from one or more results, beside the paper's own numbers, written
as files: ``bench run`` writes a run's tables (``write_run_tables``), ``bench table`` several runs'
tables and their report.html (``build``).

What each table holds is ``bench.outputs.paper_layout``, what of it is shown ``bench.outputs.table_select``;
the formats CSV, LaTeX (``bench.outputs.table_latex``, booktabs) and Markdown (``bench.outputs.table_text``);
LaTeX and Markdown mark the significantly best of our rows per column in bold
(``bench.outputs.table_bold``), and a missing metric shows a dash with its reason as a footnote.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from bench.core import results
from bench.core.curve_data import curve_lines
from bench.core.errors import BenchError, CannotWrite
from bench.core.fileio import atomic_write_bytes
from bench.core.results import Results
from bench.engines.plots import robustness_curves
from bench.outputs import report as pages
from bench.outputs.all_tables import all_tables, run_tables
from bench.outputs.over_seeds import over_seeds as seeds_merged
from bench.outputs.paper_layout import Table, labels
from bench.outputs.report import write_report
from bench.outputs.table_latex import to_latex
from bench.outputs.table_select import Choice, choose
from bench.outputs.table_text import to_markdown

CURVES_FIGURE = "robustness_curves.png"  # bench table: several runs' curves on one plot


def write(t: Table, out: Path) -> list[Path]:
    """The table as CSV, LaTeX and Markdown files in ``out``, each written atomically (a failed
    write is one ``cannot write PATH: reason`` line)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CannotWrite(out, e) from None
    paths = [out / f"{t.name}.{ext}" for ext in ("csv", "tex", "md")]
    csv = t.df.map(_round6).to_csv(index=False)
    for p, text in zip(paths, (csv, to_latex(t), to_markdown(t)), strict=True):
        atomic_write_bytes(p, text.encode())
    return paths


def _round6(v):
    """A float to 6 significant digits, so the CSV holds no float noise (0.47609999999999997 is 0.4761)."""
    return float(f"{v:.6g}") if isinstance(v, float) and math.isfinite(v) else v


def write_run_tables(res: Results, out: Path) -> list[Path]:
    """Write ``run_tables(res)`` into ``out``."""
    return [p for t in run_tables(res) for p in write(t, out)]


def curve_figure(runs: list[Results], out: Path) -> list[Path]:
    """``out/robustness_curves.png``: every run's robustness curves (``--eps-grid``) on one plot,
    a line per run and attack; [] when no run has a curve."""
    lines = curve_lines(runs, labels(runs))
    if not lines:
        return []
    norms = sorted({str((r.run.get("config") or {}).get("norm", "Linf")) for r in runs})
    return [robustness_curves(lines, out / CURVES_FIGURE, title="Robust accuracy against eps",
                              xlabel=f"eps ({', '.join(norms)})")]


def write_run_outputs(res: Results, out: Path, log) -> None:
    """The one epilogue of ``bench run`` and ``bench samples``: OUT/tables, then OUT/results.json,
    then OUT/report.html (after results.json: a failing page never loses results, it is one line)."""
    write_run_tables(res, out / "tables")
    res.write(out / "results.json")
    log(f"results: {out / 'results.json'}")
    try:
        pages.write_run_report(res, out)  # through the module: a test may replace it
    except Exception as e:  # noqa: BLE001
        log(f"report.html not written: {type(e).__name__}: {e}")


@dataclass
class Built:
    """What ``build`` made: the runs read, the tables, the files written."""

    runs: list[tuple[Path, Results]]
    tables: list[Table]
    paths: list[Path]
    report: Path | None = None
    report_error: str | None = None


def load_runs(dirs) -> list[tuple[Path, Results]]:
    """Read ``DIR/results.json`` (or a results file named directly) for each of ``dirs``.

    Bad input raises BenchError with one line: a missing directory, no results.json in it, a
    file that is not JSON, a results file of another schema or shape."""
    if not dirs:
        raise BenchError("no result directories given")
    runs = [(Path(d) if Path(d).is_dir() else Path(d).parent, results.read(d)) for d in dirs]
    seen: dict[Path, str] = {}
    for d in dirs:
        file = (Path(d) / "results.json" if Path(d).is_dir() else Path(d)).resolve()
        if file in seen:
            also = f" (as {seen[file]})" if seen[file] != str(d) else ""
            raise BenchError(f"{d} is given twice{also}: each run is one row, give it once")
        seen[file] = str(d)
    return runs


SEEDS_WITH_SPREAD = (" Rows marked [seeds ...] are the mean over those seeds, ± the standard deviation "
                     "over the seeds (not a standard error).")
SEEDS_WITHOUT_SPREAD = (" Rows marked [seeds ...] are the mean over those seeds; their standard deviation "
                        "over the seeds is in the suite tables (this table shows none).")


def build(dirs, out: str | Path, report: bool = True, over_seeds: bool = False, choice: Choice | None = None) -> Built:
    """``bench table``: Tables 1-3 over the runs in ``dirs`` beside the paper's numbers, written as
    CSV, LaTeX and Markdown into ``out``, with ``out/report.html`` (tables, every run's figures,
    settings and versions).  A table or column of which no run holds a metric is left out; a run
    without a metric of a table shows a dash with the reason ("not run") in a footnote; ``choice``:
    the columns, rows, caption, label and paper rows asked for (``table_select``).  An ``out``
    that holds a run (results.json) is refused: its report.html would be overwritten.  A failing report is recorded in
    ``report_error``, never losing the tables written before it.  ``over_seeds``: the runs of one
    model at several seeds are one row, mean ± the standard deviation over the seeds
    (``bench.outputs.over_seeds``); the report still shows every run."""
    runs = load_runs(dirs)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out} exists and is not a directory")
    if (out / "results.json").exists():
        raise BenchError(f"--out {out} holds a run (results.json): its report.html would be overwritten; "
                         "choose another directory")
    rows = [r for _, r in runs]
    if over_seeds:
        rows = seeds_merged(rows)
    tables = choose(all_tables(rows), choice or Choice())
    if over_seeds and len(rows) < len(runs):
        for t in tables:  # only a table that shows spreads promises them (Tables 1-3 show none)
            t.caption += SEEDS_WITH_SPREAD if t.stds else SEEDS_WITHOUT_SPREAD
    try:
        paths = [p for t in tables for p in write(t, out)]
    except OSError as e:
        raise BenchError(f"cannot write to --out {out}: {e.strerror or e}") from None
    figures = curve_figure([r for _, r in runs], out)
    paths += figures
    built = Built(runs, tables, paths)
    if report:
        try:
            built.report = write_report(out / "report.html", runs, tables, title=f"JEAT-Bench: {len(runs)} run(s)",
                                        figures=figures)
        except Exception as e:  # the tables above are kept whatever happens to the page
            built.report_error = f"{type(e).__name__}: {e}"
    return built
