"""What Tables 1-3 hold, beside the paper's own numbers, and the row helpers every table shares
(``bench.outputs.all_tables`` builds the others with them, ``bench.outputs.table_select`` chooses
what is shown, ``bench.outputs.table_files`` writes them, ``table_text`` and ``table_latex`` format
them, ``bench.outputs.report`` shows them).

Each table is a pandas DataFrame with a ``Model`` column, our rows first and the paper's rows
(``source`` = paper) after; values are floats (NaN where missing), with the reason of a missing
value kept as a note per cell.  Each row states what its numbers are comparable under (``CONTEXT``):
its data set, its threat model (norm, eps; in tables with a metric whose group declares ``eps``)
and its number of points n (a cell on other points says so in a note); each of our cells keeps its
result (``Table.results``), from which the significantly best among our rows of the same data set
and threat model is marked (``bench.outputs.table_bold``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import PurePath

import pandas as pd

from bench.core.results import Result, Results
from bench.inputs import zoo
from bench.metrics import registry

PERCENT_UNITS = ("ECE",)  # a family shown in % in every column, as its headline metric (ece) is
HEADER_UNITS = ("nats", "dB")  # units a column header names; the others are the metric's own scale


def is_percent(metric: str) -> bool:
    """Shown in %: declared with display ``percent`` (bench.metrics.Metric), or of a family whose
    headline metric is (MCE, adaptive and scaled ECE beside ECE: one unit per family)."""
    spec = registry.spec(metric)
    return spec is not None and (spec.display == "percent" or spec.unit in PERCENT_UNITS)


def _scale(metric: str) -> float:
    """100 for a metric shown in % (``is_percent``), else 1."""
    return 100.0 if is_percent(metric) else 1.0


def header(column: str, metric: str) -> str:
    """A column's header with its unit: ``(%)`` for a percent column, ``(nats)``, ``(dB)``."""
    spec = registry.spec(metric)
    unit = "%" if is_percent(metric) else spec.unit if spec is not None and spec.unit in HEADER_UNITS else None
    return column if unit is None or f"({unit})" in column else f"{column} ({unit})"


def _better(columns: dict[str, str]) -> dict[str, str]:
    """display name -> "max" | "min" from each metric's declared ``higher_is_better`` (a metric
    without a direction gets no best)."""
    direction = {c: registry.spec(m).higher_is_better for c, m in columns.items()}
    return {c: "max" if up else "min" for c, up in direction.items() if up is not None}


@dataclass
class Table:
    name: str
    caption: str
    df: pd.DataFrame  # columns: Model, source, then metric columns (display names)
    columns: dict[str, str]  # display name -> metric name
    better: dict[str, str]  # display name -> "max" | "min"
    notes: dict[tuple[int, str], str] = field(default_factory=dict)  # (row, column) -> reason
    context: list[str] = field(default_factory=list)  # the CONTEXT columns after source (_finish)
    stds: dict[tuple[int, str], float] = field(default_factory=dict)  # (row, column) -> std, shown "v ± std"
    results: dict[tuple[int, str], Result] = field(default_factory=dict)  # (row, column) -> our run's result
    label: str | None = None  # LaTeX \label (default tab:NAME)

    @property
    def comparable(self) -> list[str]:
        """The context columns whose values must agree for two rows to be ranked (not n)."""
        return [c for c in self.context if c != "n"]


CONTEXT = ("Data set", "Threat model", "n")
PAPER_THREAT = "Linf, eps 8/255"  # the JEAT paper's CIFAR threat model


def eps_text(eps: float) -> str:
    """An attack radius as written: ``8/255`` where it is k/255 for k in 1..32 (image radii), else
    four significant digits."""
    k = eps * 255
    return f"{round(k)}/255" if 1 <= round(k) <= 32 and abs(k - round(k)) < 1e-6 else f"{eps:.4g}"


def _uses_threat(metrics) -> bool:
    """Whether a metric's numbers depend on the attack radius: its group declares ``eps``."""
    return any((g := registry.group_of(m)) is not None and "eps" in g.settings for m in metrics)


def _dataset(r: Results) -> str:
    """The data set evaluated (run.data), else the one the model records."""
    return str((r.run.get("data") or {}).get("name") or r.model.get("dataset") or "unknown")


def _threat_text(r: Results) -> str:
    norm, eps = _threat(r)
    text = f"{norm}, eps {eps_text(eps)}" if isinstance(eps, int | float) else norm
    cfg = r.run.get("config") or {}
    if cfg.get("defense") not in (None, "none"):  # defended inference (bench.engines.defense)
        text += f", {cfg['defense']} K={cfg.get('refine_steps')} C={cfg.get('refine_chains')}"
    return text


def _paper_dataset(model: str) -> str:
    return "cifar100" if "CIFAR-100" in model else "cifar10" if "CIFAR-10" in model else "unknown"


def _finish(t: Table, runs: list[Results], picked=None) -> Table:
    """Insert the CONTEXT columns after ``source``: our rows' data set, threat model and n (the
    points of the row's first number; a cell on other points gets a note ``n = K``), the paper's
    rows' data set and threat model.  ``picked(i, metric)``: the metric that fills a column of row i
    (Table 3 takes AutoAttack's points)."""
    threat = _uses_threat(t.columns.values())
    ds, tm, ns = [], [], []
    for i, model in enumerate(t.df["Model"]):
        if i < len(runs):
            r = runs[i]
            ds.append(_dataset(r))
            tm.append(_threat_text(r))
            got = [(col, r.metrics.get(picked(i, m) if picked else m)) for col, m in t.columns.items()]
            t.results.update({(i, col): res for col, res in got if res is not None})
            got = [(col, res) for col, res in got if res is not None and res.value is not None]
            n = got[0][1].n if got else None
            ns.append(float(n) if n else math.nan)
            for col, res in got:
                if res.n and res.n != n:
                    t.notes.setdefault((i, col), f"on n = {res.n} points, not the row's n = {n}")
                raised = [f.get("flag") for f in (res.details or {}).get("flags") or []]
                if raised:  # the sanity flags of the cell's number (bench.runtime.sanity)
                    old = t.notes.get((i, col))
                    t.notes[(i, col)] = (f"{old}; " if old else "") + "sanity flags raised: " + ", ".join(raised)
        else:
            ds.append(_paper_dataset(str(model)))
            tm.append(PAPER_THREAT)
            ns.append(math.nan)
    t.context = ["Data set"] + (["Threat model"] if threat else []) + ["n"]
    t.df.insert(2, "Data set", ds)
    if threat:
        t.df.insert(3, "Threat model", tm)
    t.df.insert(len(t.context) + 1, "n", ns)
    return t


def paper(name: str) -> pd.DataFrame:
    return pd.read_csv(zoo.results_dir() / "paper" / f"{name}.csv")


# the paper's spelling of the training methods (Tables 2, 3)
METHOD_NAMES = {"normal": "Normal", "noise": "Noise", "at": "AT", "prejeat": "PreJEAT", "jeat": "JEAT",
                "jem": "JEM"}


def label(res: Results) -> str:
    """A row's name: ``run.name`` where the run was given one (``bench run --name``), else the
    checkpoint's stem (``digits-jeat`` of ``.../digits-jeat.safetensors``, ``SmallCNN`` of
    ``py:mymodel:SmallCNN``), else its training method (``JEAT``); never the whole path."""
    if isinstance(res.run, dict) and isinstance(res.run.get("name"), str) and res.run["name"].strip():
        return res.run["name"].strip()
    path = str(res.model.get("path") or "").strip()
    stem = path.rsplit(":", 1)[-1] if re.match(r"^(py|rb):", path) else PurePath(path).stem if path else ""
    if stem:
        return stem
    method = res.model.get("method")
    return METHOD_NAMES.get(str(method).lower(), str(method)) if method else "model"


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, list | dict) else str(v)


def labels(runs: list[Results]) -> list[str]:
    """Row names; runs that share method and model are told apart by what differs between them:
    the training recipe (``fmnist-jeat-lrelu``) where each has its own, else the checkpoint
    (sha256), else the settings that differ (run.config), else their order."""
    names = [label(r) for r in runs]
    out = list(names)
    for name in {x for x in names if names.count(x) > 1}:
        idx = [i for i, x in enumerate(names) if x == name]
        shas = [runs[i].model.get("sha256") for i in idx]
        cfgs = [runs[i].run.get("config") or {} for i in idx]
        keys = sorted({k for c in cfgs for k in c if any(c2.get(k) != c.get(k) for c2 in cfgs)})
        recipes = [runs[i].model.get("recipe") for i in idx]
        for j, i in enumerate(idx):
            if len(set(recipes)) == len(idx) and all(recipes):
                tag = f"recipe {recipes[j]}"
            elif len(set(shas)) == len(idx) and all(shas):
                tag = f"sha256 {shas[j][:8]}"
            elif keys:
                tag = ", ".join(f"{k}={_short(cfgs[j].get(k))}" for k in keys[:3])
            else:
                tag = f"run {j + 1}"
            out[i] = f"{name} [{tag}]"
    for i, x in enumerate(out):  # still equal (e.g. same sha256 and settings): number them
        if out.count(x) > 1:
            out[i] = f"{x} #{out[:i].count(x) + 1}"
    return out


def _rows(runs: list[Results], columns: dict[str, str]):
    rows, notes = [], {}
    for i, (r, name) in enumerate(zip(runs, labels(runs), strict=True)):
        row = {"Model": name, "source": "ours"}
        for col, metric in columns.items():
            res = r.metrics.get(metric)
            if res is None or res.value is None:
                row[col] = math.nan
                notes[(i, col)] = res.reason if res is not None else "not run"
            else:
                row[col] = res.value * _scale(metric)
        rows.append(row)
    return rows, notes


def table1(runs: list[Results]) -> Table:
    cols = {"No Attack": "accuracy", "Normal Attack": "pgd20", "Energy Attack": "pgd20_energy"}
    rows, notes = _rows(runs, cols)
    p = paper("table1").set_index("metric")
    for ds, name in (("cifar10", "CIFAR-10"), ("cifar100", "CIFAR-100")):
        rows.append({"Model": f"paper: normal WRN-28-10, {name}", "source": "paper",
                     **{c: float(p.loc[m, ds]) for c, m in cols.items()}})
    return _finish(Table("table1", "Accuracy (%) under no attack, the normal (cross-entropy) PGD attack and "
                         "the energy attack of Eq. 18 (Table 1).", pd.DataFrame(rows), cols,
                         _better(cols), notes), runs)  # best = the most accurate / most robust model


FISHER_SPACE_NOTES = {
    "pixel": "ours: JFS/MFS in pixel space (derivatives w.r.t. the image in [0, 1]); on the model's normalised "
             "input z = (x - m)/s, the paper's convention, they are s^2 times these (bench run --fisher-space model)",
    "model": "ours: JFS/MFS on the model's normalised input z = (x - m)/s, the paper's convention",
    "paper": "paper: JFS/MFS computed on its model's normalised input z = (x - m)/s (not on [0, 1] pixels)",
}


def _fisher_space(r: Results) -> str:
    """The space of a run's JFS/MFS: recorded in their details, else the run's config (pixel before
    the setting existed)."""
    for m in ("jfs", "mfs"):
        res = r.metrics.get(m)
        if res is not None and res.details.get("fisher_space"):
            return str(res.details["fisher_space"])
    return str((r.run.get("config") or {}).get("fisher_space") or "pixel")


def table2(runs: list[Results]) -> Table:
    cols = {"JFS": "jfs", "MFS": "mfs", "IS": "is_mean", "FID": "fid", "Diverged (%)": "diverged_fraction"}
    rows, notes = _rows(runs, cols)
    for i, r in enumerate(runs):  # the input space of the Fisher scores, beside the paper's
        note = FISHER_SPACE_NOTES.get(_fisher_space(r), f"ours: JFS/MFS in {_fisher_space(r)} space")
        for col in ("JFS", "MFS"):
            notes.setdefault((i, col), note)  # a missing value keeps its reason
    for _, r in paper("table2").iterrows():
        row = {"Model": f"paper: {r['model']}, CIFAR-10 ({r['source']})", "source": "paper",
               **{c: float(r[m]) if m in r else math.nan for c, m in cols.items()}}
        for col in ("JFS", "MFS"):
            if not math.isnan(row[col]):
                notes[(len(rows), col)] = FISHER_SPACE_NOTES["paper"]
        rows.append(row)
    return _finish(Table("table2", "Joint / Marginal Fisher Scores (lower is better), Inception Score and FID "
                         "of SGLD-generated images, and the share of diverged SGLD chains (IS/FID are null above "
                         "max_diverged) (Table 2).", pd.DataFrame(rows), cols, _better(cols), notes), runs)


def _threat(r: Results) -> tuple[str, float | None]:
    """(norm, eps) of a run's attacks: from its pgd20 / autoattack details, else its config."""
    for m in ("pgd20", "autoattack", "pgd20_aa"):
        res = r.metrics.get(m)
        tm = res.details.get("threat_model") if res is not None else None
        if tm and tm.get("norm"):
            return str(tm["norm"]), tm.get("eps")
    cfg = r.run.get("config") or {}
    return str(cfg.get("norm") or "Linf"), cfg.get("eps")


def _table3_points(r: Results) -> tuple[dict[str, str | None], str | None, str | None]:
    """Which metric of run ``r`` fills each Table 3 column, so that a row's numbers all come from
    the same points; the note on which points they are, and the reason AutoAttack is left out.

    AutoAttack runs on the first ``n_aa`` points; its group reports the clean and PGD-20 accuracies
    of exactly those points (``accuracy_aa``, ``pgd20_aa``), and the row takes them.  A results
    file without them shows AutoAttack only where it ran on all the points of the other columns."""
    aa, acc = r.metrics.get("autoattack"), r.metrics.get("accuracy")
    if "accuracy_aa" in r.metrics or "pgd20_aa" in r.metrics:
        n = next((x.n for x in (r.metrics.get("accuracy_aa"), aa) if x is not None and x.n), None)
        note = None if acc is None or n is None or n == acc.n else \
            f"on AutoAttack's points, the first {n} of the test split ({acc.n} in Table 1)"
        return {"accuracy": "accuracy_aa", "pgd20": "pgd20_aa", "autoattack": "autoattack"}, note, None
    if aa is None or aa.value is None or acc is None or aa.n == acc.n:
        return {"accuracy": "accuracy", "pgd20": "pgd20", "autoattack": "autoattack"}, None, None
    return ({"accuracy": "accuracy", "pgd20": "pgd20", "autoattack": None}, None,
            f"AutoAttack ran on {aa.n} points, the other columns on {acc.n}: not put side by side "
            "(rerun: its group now reports accuracy_aa and pgd20_aa on its points)")


def table3(runs: list[Results]) -> Table:
    """Standard accuracy, PGD-20 and AutoAttack robustness, every number of a row from the same
    points (``_table3_points``); the columns name the norm when all runs share one."""
    threats = [_threat(r) for r in runs]
    norms = sorted({t[0] for t in threats})
    tag = f", {norms[0]}" if len(norms) == 1 else ""
    cols = {"Standard Accuracy": "accuracy", f"Robustness (PGD-20{tag})": "pgd20",
            f"AutoAttack{' (' + norms[0] + ')' if len(norms) == 1 else ''}": "autoattack"}
    rows, notes, picks = [], {}, []
    for i, (r, name) in enumerate(zip(runs, labels(runs), strict=True)):
        picked, note, left_out = _table3_points(r)
        picks.append(picked)
        row = {"Model": name, "source": "ours"}
        for col, metric in cols.items():
            use = picked[metric]
            res = r.metrics.get(use) if use else None
            if res is None or res.value is None:
                row[col] = math.nan
                notes[(i, col)] = left_out if use is None else res.reason if res is not None else "not run"
            else:
                row[col] = res.value * _scale(use)
                if note:
                    notes[(i, col)] = note
                if len(norms) > 1 and metric != "accuracy":
                    eps = threats[i][1]
                    notes[(i, col)] = f"{threats[i][0]}" + (f", eps {eps_text(eps)}" if eps is not None else "")
        rows.append(row)
    for _, r in paper("table3").iterrows():
        row = {"Model": f"paper: {r['model']}, CIFAR-10", "source": "paper",
               **{c: float(r[m]) if m in r and not pd.isna(r[m]) else math.nan for c, m in cols.items()}}
        if norms != ["Linf"]:
            for col, m in cols.items():
                if m != "accuracy" and not math.isnan(row[col]):
                    notes[(len(rows), col)] = "paper: Linf, eps 8/255"
        rows.append(row)
    t = Table("table3", "Standard accuracy, PGD-20 and AutoAttack robustness (%) (Table 3); each row's "
              "numbers come from the same test points.", pd.DataFrame(rows), cols, _better(cols), notes)
    return _finish(t, runs, lambda i, m: picks[i][m] or m)
