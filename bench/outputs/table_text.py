"""Tables as text: Markdown and HTML (LaTeX: ``bench.outputs.table_latex``, from the same cells).
Percent columns (``paper_layout.is_percent``) with two decimals; the significantly best of our rows
per column in bold (``bench.outputs.table_bold``), among the rows of the same data set and threat
model only; a missing value a dash with its reason as a numbered footnote.  All text from the
results is escaped for the target format.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

import pandas as pd

from bench.outputs.paper_layout import Table, is_percent
from bench.outputs.table_bold import significantly_best


def _fmt(v: float, percent: bool = False) -> str:
    """Percentages with two decimals; other numbers below 1 to three significant digits."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.2f}" if percent or abs(v) >= 1 else f"{v:.3g}"


def _with_std(v: float, std: float, percent: bool) -> tuple[str, str]:
    """A value and its std to the same decimal place: two for percentages, else as many as the
    value shows or the std's two significant digits need (0.481 ± 0.016, 0.0200 ± 0.0010)."""
    value = _fmt(v, percent)
    if math.isnan(std) or math.isnan(v):
        return value, _fmt(std, percent)
    shown = len(value.split(".")[1]) if "." in value else 0
    need = 0 if std <= 0 else max(0, 1 - math.floor(math.log10(std)))
    d = 2 if percent else min(max(shown, need), 6)
    return (value if d == shown else f"{v:.{d}f}"), f"{std:.{d}f}"


def _decimals(t: Table, col: str) -> int | None:
    """One number of decimals for a whole column, the most any of its cells needs (at most 4), so
    that its numbers line up; None (each cell its own) where one is in scientific notation."""
    percent = is_percent(t.columns[col])
    texts = []
    for i, v in t.df[col].items():
        if not pd.isna(v):
            texts += _with_std(v, t.stds[(i, col)], percent) if (i, col) in t.stds else [_fmt(v, percent)]
    if not texts or any("e" in x or "n" in x for x in texts):
        return None
    return min(4, max(len(x.split(".")[1]) if "." in x else 0 for x in texts))


def _best(t: Table) -> dict[str, set[int]]:
    """Column -> the rows marked best: per group of our rows with the same data set and threat
    model (``Table.comparable``), the significantly best (``bench.outputs.table_bold``)."""
    ours = t.df[t.df["source"] == "ours"]
    groups = [ours] if not t.comparable else [g for _, g in ours.groupby(t.comparable, sort=False, dropna=False)]
    best: dict[str, set[int]] = {}
    for col, how in t.better.items():
        for g in groups:
            values = {int(i): float(v) for i, v in g[col].dropna().items()}
            results = {i: t.results[(i, col)] for i in values if (i, col) in t.results}
            best.setdefault(col, set()).update(significantly_best(values, results, how))
    return best


def _context_cell(v) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.0f}"
    return str(v)


@dataclass
class Cell:
    """One metric cell: its value and std as text ("–" where missing), bold or not, its footnote mark."""

    value: str
    std: str | None
    bold: bool
    mark: int | None


def footnote(t: Table, i: int, col: str) -> str | None:
    """The note of a cell, saying what it means: a missing value of ours ``no value: REASON``."""
    note = t.notes.get((i, col))
    if note is None:
        return None
    missing = t.df.loc[i, "source"] == "ours" and pd.isna(t.df.loc[i, col])
    return f"no value: {note}" if missing else note


def cells(t: Table) -> tuple[list[list[Cell]], list[str]]:
    """Per row, per metric column (``t.columns``), the ``Cell``; and the footnotes, numbered in
    order of first use."""
    best = _best(t)
    marks: dict[str, int] = {}
    body = []
    decimals = {col: _decimals(t, col) for col in t.columns}
    for i, row in t.df.iterrows():
        out = []
        for col in t.columns:
            percent = is_percent(t.columns[col])
            value, std = _fmt(row[col], percent), None
            if (i, col) in t.stds:
                value, std = _with_std(row[col], t.stds[(i, col)], percent)
            if decimals[col] is not None and value != "–":
                d = decimals[col]
                value, std = f"{row[col]:.{d}f}", None if std is None else f"{t.stds[(i, col)]:.{d}f}"
            note = footnote(t, i, col)
            if note is not None and note not in marks:
                marks[note] = len(marks) + 1
            out.append(Cell(value, std, i in best.get(col, ()), marks.get(note)))
        body.append(out)
    return body, list(marks)


def _cells(t: Table, bold) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, body cells as plain text (with bold best and footnote marks) and the footnotes."""
    body, notes = cells(t)
    header = ["Model"] + list(t.context) + list(t.columns)
    rows = []
    for (_, row), line in zip(t.df.iterrows(), body, strict=True):
        texts = [str(row["Model"])] + [_context_cell(row[c]) for c in t.context]
        for c in line:
            s = c.value + (f" ± {c.std}" if c.std is not None else "")
            s = bold(s) if c.bold else s
            texts.append(s + (f" [{c.mark}]" if c.mark else ""))
        rows.append(texts)
    return header, rows, [f"[{k}] {n}" for k, n in enumerate(notes, 1)]


def _md_escape(s: str) -> str:
    """Text from results files in Markdown: no table breaks, no raw HTML."""
    return s.replace("|", "\\|").replace("<", "\\<").replace(">", "\\>")


def to_markdown(t: Table) -> str:
    header, body, notes = _cells(t, lambda s: f"**{s}**")
    lines = [f"**{t.name}**: {t.caption}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in body]
    if notes:
        lines += [""] + [_md_escape(n) for n in notes]
    return "\n".join(lines) + "\n"


def to_html(t: Table) -> str:
    """The table as an HTML fragment (all text escaped); best of ours in <strong>, paper rows in
    class ``paper``, footnotes below."""
    header, body, notes = _cells(t, lambda s: f"\x00B{s}\x00E")

    def cell(s: str) -> str:
        return html.escape(s).replace("\x00B", "<strong>").replace("\x00E", "</strong>")

    src = list(t.df["source"])
    lines = [f'<table class="results" id="{html.escape(t.name)}">',
             f"<caption><b>{html.escape(t.name)}</b>: {html.escape(t.caption)}</caption>",
             "<thead><tr>" + "".join(f"<th>{cell(h)}</th>" for h in header) + "</tr></thead>", "<tbody>"]
    for i, row in enumerate(body):
        cls = ' class="paper"' if src[i] == "paper" else ""
        lines.append(f"<tr{cls}><th scope=\"row\">{cell(row[0])}</th>"
                     + "".join(f"<td>{cell(c)}</td>" for c in row[1:]) + "</tr>")
    lines.append("</tbody></table>")
    if notes:
        lines.append('<ul class="notes">' + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    return "\n".join(lines) + "\n"
