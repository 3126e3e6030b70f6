"""Gates for a new checkpoint in ``bench check`` (docs/COMPARE.md):

- ``--require 'pgd20>=0.60'`` (repeatable; ``>=``, ``>``, ``<=``, ``<``): a threshold on a run's
  metric, with or without ``--baseline``; unmet, missing or null fails (exit 1);
- ``--another-model`` (``--baseline OLD``): NEW is another model on the same evaluation
  (everything but the model equal), and fails where it is significantly worse than OLD in the
  metric's declared direction: a paired one-sided test per metric (McNemar's exact test for a share
  of points, the paired z-test of per-point differences or of a paired bootstrap otherwise;
  ``bench.outputs.compare``) against ``--margin METRIC=X`` (default 0: any worsening), at level
  ``--alpha`` after Holm's correction over the gated metrics.  Equal or better passes, and says which.
"""

from __future__ import annotations

import math
import operator
import re

from bench.core import paired
from bench.core.errors import BenchError
from bench.core.results import Results
from bench.metrics import registry
from bench.outputs import check, compare
from bench.outputs.check_output import IMPROVED, MISSING, NOT_CHECKABLE, OK, REGRESSION, Report, Row

_REQ = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(>=|<=|>|<)\s*(\S+)\s*$")
_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


def parse_requirements(items, names) -> list[tuple[str, str, float]]:
    """``METRIC>=X`` strings -> [(metric, op, x)]; bad syntax, a non-finite X or a name that is no
    metric (of ``names``) raise BenchError."""
    out = []
    for item in items or ():
        m = _REQ.match(item)
        if not m:
            raise BenchError(f"--require {item!r}: expected METRIC>=X or METRIC<=X, e.g. 'pgd20>=0.60'")
        name, op, raw = m.groups()
        try:
            x = float(raw)
        except ValueError:
            raise BenchError(f"--require {item!r}: {raw!r} is not a number") from None
        if not math.isfinite(x):
            raise BenchError(f"--require {item!r}: the threshold must be finite")
        if name not in names:
            raise BenchError(f"--require {item!r}: unknown metric {name!r}")
        out.append((name, op, x))
    return out


def requirement_rows(res: Results, requirements) -> list[Row]:
    """One row per requirement: ``ok`` when met, ``REGRESSION`` when unmet, missing or null."""
    rows = []
    for name, op, x in requirements:
        r = res.metrics.get(name)
        label = f"{name}{op}{x:g}"
        if r is None or r.value is None:
            why = "not in this run" if r is None else f"null: {r.reason}"
            rows.append(Row(label, None, None, None, None, REGRESSION, f"required, {why}"))
            continue
        met = _OPS[op](r.value, x)
        rows.append(Row(label, None, r.value, r.value - x, None, OK if met else REGRESSION,
                        "required: met" if met else f"required: {r.value:.4g} is not {op} {x:g}"))
    return rows


def another_model(base: Results, cur: Results, margins: dict[str, float], alpha: float, strict: bool,
                  run_name: str) -> Report:
    """NEW (``cur``) against OLD (``base``), metric by metric (see the module docstring)."""
    names = [n for n in base.metrics if n in cur.metrics]
    if not names:
        raise BenchError("not compared: the run and the baseline have no metric in common")
    tests, pvals = {}, {}
    for n in names:
        t = compare.paired_test(n, base.metrics[n], cur.metrics[n])
        tests[n] = t
        pvals[n] = compare.worse_p(n, t, margins.get(n, 0.0))
    holm = paired.holm(pvals)
    rows = [_gate_row(n, tests[n], pvals[n], holm[n], margins.get(n, 0.0), alpha) for n in names]
    for n in dict.fromkeys([*base.metrics, *cur.metrics]):
        if n not in names:
            b, c = base.metrics.get(n), cur.metrics.get(n)
            rows.append(Row(n, b and b.value, c and c.value, None, None, MISSING,
                            "not in the baseline" if b is None else "not in this run"))
    notes = [f"another model: worse than the baseline fails where a paired one-sided test rejects 'not worse by more "
             f"than the margin' at {alpha} after Holm's correction over {sum(p is not None for p in pvals.values())} "
             "metrics"]
    if not check.model_differences(base, cur):
        notes.append("the run evaluates the same weights as the baseline")
    return Report(rows, notes, "another model", run_name, strict)


def _gate_row(name: str, t: compare.Test, p, p_holm, margin: float, alpha: float) -> Row:
    counts = f"of {t.n} points, baseline only {t.only_a}, this run only {t.only_b}; " if t.test == compare.MCNEMAR else ""
    if t.a is None or t.b is None:
        if t.a is None and t.b is None:
            return Row(name, None, None, None, None, OK, "null in both")
        return Row(name, t.a, t.b, None, None, REGRESSION, t.note)
    if p is None:
        why = "no direction (Metric.higher_is_better)" if registry.spec(name).higher_is_better is None else t.note
        return Row(name, t.a, t.b, t.diff, margin, NOT_CHECKABLE, why)
    how = f"{counts}{t.test}, one-sided p {compare_p(p)}, Holm {compare_p(p_holm)}"
    if p_holm < alpha:
        return Row(name, t.a, t.b, t.diff, margin, REGRESSION, f"significantly worse: {how}")
    better = registry.spec(name).higher_is_better
    if t.diff == 0 and not (t.only_a or t.only_b):
        word, status = "equal", OK
    elif (t.diff > 0) == better:
        word, status = "better", IMPROVED
    else:
        word, status = "worse, not significantly", OK
    return Row(name, t.a, t.b, t.diff, margin, status, f"{word}: {how}")


def compare_p(p: float) -> str:
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def run_check(run_dir, baseline=None, tolerance_items=(), exact=False, strict=False, statistical=False,
              one_sided=False, requires=(), another=False, margin_items=(), alpha: float = 0.05) -> Report:
    """``bench check`` with its gates: the regression check (``check.check``) or, with
    ``another``, the comparison of another model; then the ``requires`` rows."""
    if another and baseline is None:
        raise BenchError("--another-model compares with --baseline OLD: give it")
    if margin_items and not another:
        raise BenchError("--margin is for --another-model (a rerun's margins are --tolerance)")
    if another and (tolerance_items or exact or statistical or one_sided):
        raise BenchError("--another-model takes --margin, not --tolerance, --exact, --statistical or --one-sided")
    if baseline is None and not requires:
        raise BenchError("give --baseline FILE, --require 'METRIC>=X', or both")
    if not 0 < alpha < 1:
        raise BenchError(f"--alpha {alpha}: expected a level between 0 and 1")
    cur = check._read(run_dir, "run")
    reqs = parse_requirements(requires, check.known() | set(cur.metrics))
    label = check.run_label(run_dir, cur)
    if baseline is None:
        report = Report([], [], "requirements", label, strict)
    elif another:
        base = check._read(baseline, "baseline")
        margins = check.parse_tolerances(margin_items, check.known() | set(base.metrics) | set(cur.metrics), "--margin")
        if diffs := check.evaluation_differences(base, cur):
            raise BenchError(f"not compared: {len(diffs)} setting(s) differ from the baseline's, so this is another "
                             "evaluation, not only another model: " + "; ".join(diffs))
        report = another_model(base, cur, margins, alpha, strict, label)
    else:
        report = check.check(run_dir, baseline, tolerance_items, exact, strict, statistical, one_sided, cur)
    report.rows += requirement_rows(cur, reqs)
    return report
