"""Paper-style tables (Tables 1-3) from one or more results, beside the paper's own numbers.

Each table is a pandas DataFrame with a ``Model`` column, our rows first and the paper's rows
(``source`` = paper) after; values are floats (NaN where missing).  Writers give CSV, LaTeX
(booktabs) and Markdown; LaTeX and Markdown mark the best of our rows per column in bold, and a
missing metric shows a dash with its reason as a footnote.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench import zoo
from bench.results import Results

PERCENT = {"accuracy", "pgd20", "pgd20_energy", "autoattack", "ece", "ece_fgsm"}


@dataclass
class Table:
    name: str
    caption: str
    df: pd.DataFrame  # columns: Model, source, then metric columns (display names)
    columns: dict[str, str]  # display name -> metric name
    better: dict[str, str]  # display name -> "max" | "min"
    notes: dict[tuple[int, str], str] = field(default_factory=dict)  # (row, column) -> reason


def paper(name: str) -> pd.DataFrame:
    return pd.read_csv(zoo.results_dir() / "paper" / f"{name}.csv")


def label(res: Results) -> str:
    m = res.model
    return f"{m.get('method') or 'model'} ({m.get('arch')}, {m.get('dataset')})"


def _rows(runs: list[Results], columns: dict[str, str]):
    labels = [label(r) for r in runs]
    dup = {x for x in labels if labels.count(x) > 1}
    rows, notes = [], {}
    for i, r in enumerate(runs):
        name = labels[i] + (f" [{Path(r.model.get('path') or '').stem}#{i}]" if labels[i] in dup else "")
        row = {"Model": name, "source": "ours"}
        for col, metric in columns.items():
            res = r.metrics.get(metric)
            if res is None or res.value is None:
                row[col] = math.nan
                notes[(i, col)] = res.reason if res is not None else "not run"
            else:
                row[col] = res.value * (100 if metric in PERCENT else 1)
        rows.append(row)
    return rows, notes


def table1(runs: list[Results]) -> Table:
    cols = {"No Attack": "accuracy", "Normal Attack": "pgd20", "Energy Attack": "pgd20_energy"}
    rows, notes = _rows(runs, cols)
    p = paper("table1").set_index("metric")
    for ds, name in (("cifar10", "CIFAR-10"), ("cifar100", "CIFAR-100")):
        rows.append({"Model": f"paper: normal WRN-28-10, {name}", "source": "paper",
                     **{c: float(p.loc[m, ds]) for c, m in cols.items()}})
    return Table("table1", "Accuracy (%) under no attack, the normal (cross-entropy) PGD attack and the "
                 "energy attack of Eq. 18 (Table 1).", pd.DataFrame(rows), cols,
                 {c: "max" if c == "No Attack" else "min" for c in cols}, notes)


def table2(runs: list[Results]) -> Table:
    cols = {"JFS": "jfs", "MFS": "mfs", "IS": "is_mean", "FID": "fid"}
    rows, notes = _rows(runs, cols)
    for _, r in paper("table2").iterrows():
        rows.append({"Model": f"paper: {r['model']}, CIFAR-10 ({r['source']})", "source": "paper",
                     **{c: float(r[m]) for c, m in cols.items()}})
    return Table("table2", "Joint / Marginal Fisher Scores (lower is better), Inception Score and FID "
                 "of SGLD-generated images (Table 2).", pd.DataFrame(rows), cols,
                 {"JFS": "min", "MFS": "min", "IS": "max", "FID": "min"}, notes)


def table3(runs: list[Results]) -> Table:
    cols = {"Standard Accuracy": "accuracy", "Robustness": "pgd20"}
    rows, notes = _rows(runs, cols)
    for _, r in paper("table3").iterrows():
        rows.append({"Model": f"paper: {r['model']}, CIFAR-10", "source": "paper",
                     **{c: float(r[m]) for c, m in cols.items()}})
    return Table("table3", "Standard accuracy and L-inf PGD-20 robustness (%) (Table 3).",
                 pd.DataFrame(rows), cols, {c: "max" for c in cols}, notes)


def all_tables(runs: list[Results]) -> list[Table]:
    return [table1(runs), table2(runs), table3(runs)]


def _fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"


def _best(t: Table) -> dict[str, int]:
    ours = t.df[t.df["source"] == "ours"]
    best = {}
    for col, how in t.better.items():
        vals = ours[col].dropna()
        if len(vals) > 1:
            best[col] = int(vals.idxmax() if how == "max" else vals.idxmin())
    return best


def _cells(t: Table, bold) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, body cells (with bold best and footnote marks) and the footnotes."""
    best = _best(t)
    marks, footnotes = {}, []
    for reason in t.notes.values():
        if reason not in marks:
            marks[reason] = len(marks) + 1
            footnotes.append(f"[{marks[reason]}] {reason}")
    header = ["Model"] + list(t.columns)
    body = []
    for i, row in t.df.iterrows():
        cells = [str(row["Model"])]
        for col in t.columns:
            s = _fmt(row[col])
            if best.get(col) == i:
                s = bold(s)
            if (i, col) in t.notes:
                s += f" [{marks[t.notes[(i, col)]]}]"
            cells.append(s)
        body.append(cells)
    return header, body, footnotes


def to_markdown(t: Table) -> str:
    header, body, notes = _cells(t, lambda s: f"**{s}**")
    lines = [f"**{t.name}**: {t.caption}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    if notes:
        lines += [""] + notes
    return "\n".join(lines) + "\n"


def _tex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("[", "{[}"), ("]", "{]}"), ("–", "--")):
        s = s.replace(a, b)
    return s


def to_latex(t: Table) -> str:
    header, body, notes = _cells(t, lambda s: f"@@B{s}@@E")
    def cell(s):
        return _tex_escape(s).replace("@@B", r"\textbf{").replace("@@E", "}")
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}",
             r"\toprule", " & ".join(cell(h) for h in header) + r" \\", r"\midrule"]
    n_ours = int((t.df["source"] == "ours").sum())
    for i, row in enumerate(body):
        if i == n_ours and 0 < n_ours < len(body):
            lines.append(r"\midrule")
        lines.append(" & ".join(cell(c) for c in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\caption{" + _tex_escape(t.caption) + "}"]
    if notes:
        lines += [r"\par\footnotesize " + _tex_escape(n) for n in notes]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write(t: Table, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{t.name}.{ext}" for ext in ("csv", "tex", "md")]
    t.df.to_csv(paths[0], index=False)
    paths[1].write_text(to_latex(t))
    paths[2].write_text(to_markdown(t))
    return paths


def write_run_tables(res: Results, out: Path) -> list[Path]:
    """The tables of one run whose metrics were computed (a table with none of ours is skipped)."""
    written = []
    for t in all_tables([res]):
        if any(m in res.metrics for m in t.columns.values()):
            written += write(t, out)
    return written
