"""A table as LaTeX for a paper: booktabs rules, values in math mode (``$62.30 \\pm 1.50$``, bold as
``\\mathbf``), eps as ``$\\epsilon = 8/255$``, the unit in the header (``ECE (\\%)``), the context
columns that every row shares (data set, threat model, n) said once in the caption, footnotes
lettered below the table, a ``\\label``, and every text from the results escaped.  The cells are
``table_text.cells``: the same values, bold marks and notes as the Markdown and HTML.  Needs
``\\usepackage{booktabs}``.
"""

from __future__ import annotations

import math
import re
import string

from bench.outputs.paper_layout import Table
from bench.outputs.table_bold import RULE
from bench.outputs.table_text import Cell, cells

_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
             "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
             "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}", "–": "--", "±": r"$\pm$"}
_SPECIAL = re.compile("|".join(re.escape(k) for k in _SPECIALS))
_NORMS = {"Linf": r"$\ell_\infty$", "L-inf": r"$\ell_\infty$", "L2": r"$\ell_2$", "L1": r"$\ell_1$"}


def escape(s: str) -> str:
    """Text as LaTeX prints it, in one pass (an escape is never escaped again)."""
    return _SPECIAL.sub(lambda m: _SPECIALS[m.group(0)], str(s))


def prose(s: str) -> str:
    """Escaped text with the notation of the threat models as math: ``Linf`` as ``$\\ell_\\infty$``,
    ``eps 8/255`` as ``$\\epsilon = 8/255$``, a bare ``eps`` as ``$\\epsilon$``."""
    s = escape(s)
    s = re.sub(r"\beps (\d[\d.e+-]*(?:/\d+)?)", lambda m: rf"$\epsilon = {m.group(1)}$", s)
    s = re.sub(r"\beps\b", r"$\\epsilon$", s)
    return re.sub(r"(?<![\w-])(Linf|L-inf|L2|L1)\b", lambda m: _NORMS[m.group(1)], s)


def _letter(k: int) -> str:
    letters = string.ascii_lowercase
    return letters[k - 1] if k <= len(letters) else str(k)


def _value(c: Cell) -> str:
    if c.value == "–":
        text = "--"
    else:
        inner = c.value + (rf" \pm {c.std}" if c.std is not None else "")
        text = f"$\\mathbf{{{inner}}}$" if c.bold else f"${inner}$"
    return text + (rf"\textsuperscript{{{_letter(c.mark)}}}" if c.mark else "")


def _context(col: str, v) -> str:
    if isinstance(v, float):
        return "--" if math.isnan(v) else f"{v:.0f}"
    return prose(str(v)) if col == "Threat model" else escape(str(v))


def shared_context(t: Table) -> dict[str, object]:
    """The context columns whose value every row shares (n: every row that has one), with it."""
    shared = {}
    for col in t.context:
        values = [v for v in t.df[col] if not (isinstance(v, float) and math.isnan(v))]
        if values and len(set(map(str, values))) == 1:
            shared[col] = values[0]
    return shared


def _context_sentence(shared: dict[str, object]) -> str:
    parts = []
    if "Data set" in shared:
        parts.append("data set " + escape(str(shared["Data set"])))
    if "Threat model" in shared:
        parts.append("threat model " + prose(str(shared["Threat model"])))
    if "n" in shared:
        parts.append(f"$n = {float(shared['n']):.0f}$ test points")
    return (" All rows: " + ", ".join(parts) + ".") if parts else ""


def _stacked(text: str, width: int = 12) -> str:
    """A long header on two lines (a nested tabular, no package needed), split at the space
    nearest its middle."""
    spaces = [i for i, ch in enumerate(text) if ch == " "]
    if len(text) <= width or not spaces:
        return prose(text)
    cut = min(spaces, key=lambda i: abs(i - len(text) / 2))
    return rf"\begin{{tabular}}[b]{{@{{}}c@{{}}}}{prose(text[:cut])}\\{prose(text[cut + 1:])}\end{{tabular}}"


def _label(t: Table) -> str:
    """The \\label: characters a label may hold (no escapes: they would break the .aux file)."""
    return re.sub(r"[^A-Za-z0-9:._-]", "-", t.label or f"tab:{t.name}")


def _shared_notes(body: list[list[Cell]], ours: int) -> set[int]:
    """Footnote marks on every value of our rows (said once, in the caption)."""
    valued = [c for line in body[:ours] for c in line if c.value != "–"]
    if len(valued) < 2:
        return set()
    return {c.mark for c in valued if c.mark} if len({c.mark for c in valued}) == 1 else set()


def to_latex(t: Table) -> str:
    """The table as a LaTeX ``table`` float (module docstring)."""
    body, notes = cells(t)
    shared = shared_context(t)
    context = [c for c in t.context if c not in shared]
    ours = int((t.df["source"] == "ours").sum())
    said = _shared_notes(body, ours)
    caption = prose(t.caption) + _context_sentence(shared)
    caption += "".join(f" All values of our rows: {prose(notes[k - 1])}." for k in sorted(said))
    if t.better and ours > 1:
        caption += " " + escape(RULE).replace(r"p \textless{} 0.05", "$p < 0.05$")
    left = [k for k in range(1, len(notes) + 1) if k not in said]
    for line in body:
        for c in line:
            c.mark = left.index(c.mark) + 1 if c.mark in left else None
    spec = "@{}l" + "".join("r" if c == "n" else "l" for c in context) + "r" * len(t.columns) + "@{}"
    header = ["Model"] + ["$n$" if c == "n" else escape(c) for c in context] + [_stacked(c) for c in t.columns]
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\setlength{\tabcolsep}{4pt}",
             rf"\caption{{{caption}}}", rf"\label{{{_label(t)}}}", r"\smallskip", rf"\begin{{tabular}}{{{spec}}}",
             r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
    for i, ((_, row), line) in enumerate(zip(t.df.iterrows(), body, strict=True)):
        if i == ours and 0 < ours < len(body):
            lines.append(r"\midrule")
        texts = [escape(str(row["Model"]))] + [_context(c, row[c]) for c in context] + [_value(c) for c in line]
        lines.append(" & ".join(texts) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if left:
        lines.append(r"\par\smallskip{\footnotesize\raggedright")
        lines += [rf"\textsuperscript{{{_letter(j)}}}\,{prose(notes[k - 1])}\par" for j, k in enumerate(left, 1)]
        lines.append("}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"

