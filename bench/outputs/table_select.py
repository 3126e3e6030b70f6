"""What of a table a paper shows (``bench table`` and the tables ``bench run`` writes): the paper's
rows only where they compare (``--with-paper``), no column and no table of which nothing ran, and
the user's choice of columns (``--columns``), rows and their names (``--rows``), caption and
``\\label`` (``Choice``).

A column "ran" when one of our rows holds its metric, with a value or null with its reason (a
dash and a footnote say why); a metric no run holds is left out rather than shown as a column
of "not run".  By default the paper's rows (``results/paper``) stay only where they are on a data
set of our rows (the paper's CIFAR-10 and CIFAR-100 rows beside CIFAR runs); ``with_paper`` True
keeps them all, False none.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bench.core.errors import BenchError
from bench.outputs.paper_layout import Table


@dataclass
class Choice:
    """``bench table``'s options: ``columns`` (metric or column names; ``_columns``), ``rows`` (each NAME
    or OLD=NEW: the rows shown, in order, renamed), ``caption``, ``label``, ``with_paper``."""

    columns: list[str] | None = None
    rows: list[str] | None = None
    caption: str | None = None
    label: str | None = None
    with_paper: bool | None = None


def _ours(t: Table) -> list[int]:
    return [int(i) for i in t.df.index[t.df["source"] == "ours"]]


def keep_rows(t: Table, keep: list[int], names: dict[int, str] | None = None) -> Table:
    """``t`` with only the rows ``keep`` (in that order; old index), renamed by ``names``."""
    where = {old: new for new, old in enumerate(keep)}
    df = t.df.loc[keep].reset_index(drop=True)
    for old, name in (names or {}).items():
        df.loc[where[old], "Model"] = name
    def moved(d):
        return {(where[i], c): v for (i, c), v in d.items() if i in where}
    return replace(t, df=df, notes=moved(t.notes), stds=moved(t.stds), results=moved(t.results))


def keep_columns(t: Table, keep: list[str]) -> Table:
    """``t`` with only the metric columns ``keep`` (in that order) and their CSV std / n columns."""
    drop = [c for c in t.columns if c not in keep]
    extra = [f"{c} {k}" for c in drop for k in ("std", "n") if f"{c} {k}" in t.df]
    df = t.df.drop(columns=drop + extra)
    fixed = [c for c in df.columns if c not in t.columns and not any(c == f"{k} {s}" for k in t.columns
                                                                      for s in ("std", "n"))]
    spread = [f"{c} {k}" for c in keep for k in ("std", "n") if f"{c} {k}" in df]
    df = df[fixed + keep + spread]
    def kept(d):
        return {k: v for k, v in d.items() if k[1] in keep}
    return replace(t, df=df, columns={c: t.columns[c] for c in keep}, notes=kept(t.notes),
                   better={c: h for c, h in t.better.items() if c in keep}, stds=kept(t.stds),
                   results=kept(t.results))


def paper_rows(t: Table, with_paper: bool | None) -> Table:
    """The paper's rows: all (True), none (False), or those on a data set of our rows (None)."""
    ours = _ours(t)
    sets = {t.df.loc[i, "Data set"] for i in ours} if "Data set" in t.df else set()
    paper = [int(i) for i in t.df.index if i not in ours and
             (with_paper or (with_paper is None and t.df.loc[i, "Data set"] in sets))]
    return keep_rows(t, ours + paper) if len(ours) + len(paper) < len(t.df) else t


def ran(t: Table) -> Table | None:
    """``t`` without the columns none of our rows holds; None when no column is left."""
    ours = set(_ours(t))
    keep = [c for c in t.columns if any((i, c) in t.results for i in ours)]
    return None if not keep else keep_columns(t, keep) if len(keep) < len(t.columns) else t


def default(tables: list[Table]) -> list[Table]:
    """The tables as ``bench run`` writes them: the paper's rows where they compare, no empty column."""
    return [t for t in (ran(paper_rows(t, None)) for t in tables) if t is not None]


def _matches(col: str, metric: str, want: str, metrics: set[str]) -> bool:
    """A metric's name, else (no metric of that name) a column's name, with or without its unit."""
    w = want.strip().lower()
    if w in metrics:
        return w == metric.lower()
    return w == col.lower() or w == col.lower().split(" (")[0]


def _columns(tables: list[Table], wanted: list[str]) -> list[Table]:
    """The tables cut to the columns ``wanted`` (in that order): those holding all of them where
    one does (Table 3 for accuracy, pgd20, autoattack; not Table 1 too), else each holding any."""
    cut, metrics = [], {m.lower() for t in tables for m in t.columns.values()}
    for t in tables:
        keep, found = [], []
        for w in wanted:
            hits = [c for c, m in t.columns.items() if _matches(c, m, w, metrics) and c not in keep]
            found += [w] if hits else []
            keep += hits
        if keep:
            cut.append((keep_columns(t, keep), set(found)))
    used = set().union(*(f for _, f in cut))
    unknown = [w for w in wanted if w not in used]
    if unknown:
        known = sorted({m for t in tables for m in t.columns.values()})
        raise BenchError(f"--columns {', '.join(unknown)}: no such column in these runs' tables; "
                         f"they have: {', '.join(known)}")
    whole = [t for t, f in cut if f == set(wanted)]
    return whole or [t for t, _ in cut]


def _split(values: list[str], names: list[str]) -> list[tuple[str, str]]:
    """(row, new name) pairs of ``--rows``: each value a comma list of NAME or OLD=NEW, or, where a
    part of it names no row, one NAME or OLD=NEW (a new name may hold a comma)."""
    def names_a_row(p: str) -> bool:
        return p.strip() in names or p.partition("=")[0].strip() in names
    items = []
    for v in values:
        parts = v.split(",")
        if not all(names_a_row(p) for p in parts if p.strip()) and names_a_row(v):
            parts = [v]
        for p in (p.strip() for p in parts if p.strip()):
            old, _, new = p.partition("=")
            old = p if p in names else old.strip()
            items.append((old, new.strip() if p not in names and new.strip() else old))
    return items


def _rows(tables: list[Table], values: list[str]) -> list[Table]:
    names = [str(tables[0].df.loc[i, "Model"]) for i in _ours(tables[0])] if tables else []
    items = _split(values, names)
    unknown = [old for old, _ in items if old not in names]
    if unknown:
        raise BenchError(f"--rows {', '.join(unknown)}: no such row; the rows are: {', '.join(names)}")
    olds, new = [o for o, _ in items], [n for _, n in items]
    twice = sorted({o for o in olds if olds.count(o) > 1} | {n for n in new if new.count(n) > 1})
    if twice:
        raise BenchError(f"--rows names a row twice: {', '.join(twice)}")
    out = []
    for t in tables:
        at = {str(t.df.loc[i, "Model"]): i for i in _ours(t)}
        keep = [at[old] for old, _ in items] + [i for i in range(len(t.df)) if i not in at.values()]
        out.append(keep_rows(t, keep, {at[old]: name for old, name in items}))
    return out


def choose(tables: list[Table], choice: Choice) -> list[Table]:
    """``tables`` as ``choice`` asks (module docstring); bad names are one BenchError line."""
    tables = [t for t in (ran(paper_rows(t, choice.with_paper)) for t in tables) if t is not None]
    if choice.columns:
        tables = _columns(tables, choice.columns)
    if choice.rows:
        tables = _rows(tables, choice.rows)
    for t in tables:
        if choice.caption:
            t.caption = choice.caption
        if choice.label:
            t.label = choice.label if len(tables) == 1 else f"{choice.label}-{t.name}"
    return tables

