"""Tables as text: Markdown, HTML and LaTeX (booktabs).  Percent metrics (``display`` percent,
``bench.metrics.Metric``) with two decimals; the best of our rows per column in bold (by the
metric's declared direction), among the rows of the same data set and threat model only; a missing value a dash with its reason as a numbered footnote.  All
text from the results is escaped for the target format.
"""

from __future__ import annotations

import html
import math

from bench.metrics import registry
from bench.outputs.paper_tables import Table


def _fmt(v: float, percent: bool = False) -> str:
    """Percentages with two decimals; other numbers below 1 to three significant digits."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.2f}" if percent or abs(v) >= 1 else f"{v:.3g}"


def _best(t: Table) -> dict[str, set[int]]:
    """Column -> the rows marked best: per group of our rows with the same data set and threat
    model (``Table.comparable``), where the group has more than one value."""
    ours = t.df[t.df["source"] == "ours"]
    groups = [ours] if not t.comparable else [g for _, g in ours.groupby(t.comparable, sort=False, dropna=False)]
    best: dict[str, set[int]] = {}
    for col, how in t.better.items():
        for g in groups:
            vals = g[col].dropna()
            if len(vals) > 1:
                best.setdefault(col, set()).add(int(vals.idxmax() if how == "max" else vals.idxmin()))
    return best


def _context_cell(v) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.0f}"
    return str(v)


def _cells(t: Table, bold) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, body cells (with bold best and footnote marks) and the footnotes."""
    best = _best(t)
    marks, footnotes = {}, []
    for reason in t.notes.values():
        if reason not in marks:
            marks[reason] = len(marks) + 1
            footnotes.append(f"[{marks[reason]}] {reason}")
    header = ["Model"] + list(t.context) + list(t.columns)
    body = []
    for i, row in t.df.iterrows():
        cells = [str(row["Model"])] + [_context_cell(row[c]) for c in t.context]
        for col in t.columns:
            s = _fmt(row[col], percent := registry.spec(t.columns[col]).display == "percent")
            if (i, col) in t.stds:
                s += " ± " + _fmt(t.stds[(i, col)], percent)
            if i in best.get(col, ()):
                s = bold(s)
            if (i, col) in t.notes:
                s += f" [{marks[t.notes[(i, col)]]}]"
            cells.append(s)
        body.append(cells)
    return header, body, footnotes


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


def _tex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("[", "{[}"), ("]", "{]}"), ("–", "--"), ("±", r"$\pm$")):
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
