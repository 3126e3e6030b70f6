"""Regression check of a run against a baseline results.json (``bench check``).

Only comparable runs are compared.  The same model: ``model.weights_sha256`` (the weights as
loaded; the file's ``model.sha256`` is recorded, not compared, unless a run predates the weights
digest) and ``model.dataset``; the same data: the digests of both splits (``run.data.train_sha256``,
``test_sha256``); the same settings: every key of ``run.config`` that can change a metric both hold,
compared as values (a setting newer than the baseline counts as its default, which the older run
used).  ``bench check --another-model`` and ``bench compare`` (``bench.outputs.gates``,
``bench.outputs.compare``) compare other models: everything but the model must be equal.
Where they differ, ``check`` names them and stops with exit code 2: bad input, not a regression.
A baseline is refused the same way when one of its values is non-finite, outside its metric's
declared bounds (``Metric.bounds``: an accuracy of 1.258), of the wrong type, or disagrees with
its own per-point record (a value edited by hand), and when the two runs have no metric in common.

Three ways to compare (``bench.outputs.check_rules`` holds the rules):

- **exact**: ``--exact`` where a metric's fingerprint (the platform its group was computed on,
  ``run.groups[g].platform``, else ``run.platform``: CPU vendor, family, model, torch's CPU
  capability, oneDNN, BLAS, kernel-selecting environment variables, threads; plus the library
  versions and fast paths) equals the baseline's: bit for bit, 1e-6 relative, no flipped point.
- **portable** (paired): the default, and ``--exact`` on a different fingerprint (the check then
  says which parts differ).  The same points with the same seeds on another machine: points that
  flipped, pairs that changed, or a small relative drift, within each metric's declared margin.
- **statistical**: where the fast paths differ (``channels_last``, ``amp``, ``compile``), which
  changes the numbers beyond kernel noise, or with ``--statistical``: independent-sample
  tolerances (3 standard errors of the difference), wide, for gross breakage only.

A metric null in both runs is ok; null in one only is a regression.  A metric absent from one
side is ``missing``: a regression when the run's own suites include it (``run.suites``; a killed
run), otherwise not a failure unless ``--strict``, which also fails a metric that is not
checkable (CI runs with ``--strict``: nothing passes unchecked).  ``--tolerance NAME=ABS``
replaces a metric's tolerance in every mode (NAME may be a wildcard: ``ood_auroc_*``).
Only the settings that can change a metric both runs hold are compared
(``bench.outputs.comparability``, which says what makes two runs comparable).
``--one-sided``: a metric moving beyond its tolerance the way it declares better is ``improved``.  ``bench.outputs.check_output`` formats the report.
"""

from __future__ import annotations

import fnmatch
import math
import re
from pathlib import Path

from bench.core import results
from bench.core.errors import BenchError
from bench.core.results import Results
from bench.metrics import registry
from bench.outputs import check_rules
from bench.outputs.check_output import IMPROVED, MISSING, NOT_CHECKABLE, OK, REGRESSION, Report, Row
from bench.outputs.check_output import (
    write_outputs as write_outputs,  # the CLI's --junit/--markdown, re-exported
)
from bench.outputs.check_rules import EXACT_REL, known  # noqa: F401  (re-exported)
from bench.outputs.comparability import (  # noqa: F401  (re-exported: gates, compare, tests)
    evaluation_differences,
    extractor_differences,
    fast_path_differences,
    fingerprint_differences,
    model_differences,
    setting_differences,
)

_TOL = re.compile(r"^\s*([A-Za-z0-9_.\-*?\[\]]+)\s*=\s*(\S+)\s*$")


def parse_tolerances(items, names, option: str = "--tolerance") -> dict[str, float]:
    """``NAME=ABS`` strings -> {name: abs}; NAME may be a wildcard (``ood_auroc_*``, fnmatch) and
    sets every metric of ``names`` it matches (a later item wins).  Bad syntax, a negative or
    non-finite tolerance, a name that is no metric (of ``known()`` or of either run) and a pattern
    that matches none raise BenchError."""
    out = {}
    for item in items or ():
        m = _TOL.match(item)
        if not m:
            raise BenchError(f"{option} {item!r}: expected NAME=ABS, e.g. accuracy=0.01")
        name, raw = m.groups()
        try:
            tol = float(raw)
        except ValueError:
            raise BenchError(f"{option} {item!r}: {raw!r} is not a number") from None
        if not math.isfinite(tol) or tol < 0:
            raise BenchError(f"{option} {item!r}: the tolerance must be a finite number >= 0")
        if any(ch in name for ch in "*?["):
            matched = sorted(n for n in names if fnmatch.fnmatchcase(n, name))
            if not matched:
                raise BenchError(f"{option} {item!r}: the pattern {name!r} matches no metric of either run")
            out.update(dict.fromkeys(matched, tol))
            continue
        if name not in names:
            raise BenchError(f"{option} {item!r}: unknown metric {name!r} (known: {', '.join(sorted(names))})")
        out[name] = tol
    return out


def refuse_bad_baseline(base: Results, raw: dict, where: str, records: bool = True) -> None:
    """One line (exit 2) for a baseline no check can trust (``Metric.refusal``): a value of the wrong
    type, non-finite or outside its metric's bounds, an n that is no count, and (``records``) a
    per-point record that does not parse, counts other points than n, or disagrees with the value
    (a run's disagreement is compared instead: a regression)."""
    for name in base.metrics:
        doc = raw.get(name) if isinstance(raw, dict) else None
        why = registry.spec(name).refusal(doc, records)
        if why:
            raise BenchError(f"{where}: metric {name}: {why}")


def refuse_bad_settings(res: Results, where: str) -> None:
    """One line (exit 2) for a run or baseline whose recorded setting is not one its declaration
    takes (``results.setting_refusal``: an eps of "0.1", text where a number is declared)."""
    config = res.run.get("config")
    for key, v in (config.items() if isinstance(config, dict) else ()):
        why = results.setting_refusal(key, v)
        if why:
            raise BenchError(f"{where}: {why}")


def _read(path, what: str) -> Results:
    res, raw = results.read_raw(path, what)
    refuse_bad_baseline(res, raw.get("metrics"), str(path), records=what == "baseline")
    refuse_bad_settings(res, str(path))
    return res


def label(res: Results, fallback: str = "run") -> str:
    """A short name for what was checked: ``digits-jeat`` (data set and method), else ``fallback``."""
    parts = [str(res.model.get(k)) for k in ("dataset", "method") if res.model.get(k)]
    return "-".join(parts) or fallback


def run_label(run_dir, res: Results | None = None) -> str:
    """The name of a checked run in headings and JUnit classnames: the model and the run's folder,
    ``digits-jeat (runs/a)``, so a matrix of models or of runs of one model does not collide.
    Without ``res`` it reads the folder's results.json if it can (a refused check), else the folder."""
    where = Path(run_dir)
    where = where.parent if where.name == "results.json" else where
    if res is None:
        try:
            res = results.read(where)
        except Exception:  # noqa: BLE001  (only a label: the check has already said what is wrong)
            res = None
    model = label(res, "") if res is not None and isinstance(res.model, dict) else ""
    return f"{model} ({where})" if model else str(where)


# --------------------------------------------------------------------------------------------
# comparing


def _ran(res: Results, name: str) -> bool:
    """Whether ``res``'s own suites include the group that declares ``name``."""
    suites = res.run.get("suites") or ()
    g = registry.group_of(name)
    return g is not None and g.suite in suites


def _row(name: str, b, c, mode: str, tolerances: dict, suite_ran: bool, one_sided: bool = False) -> Row:
    if b is None or c is None:
        if b is not None and suite_ran:
            return Row(name, b.value, None, None, None, REGRESSION,
                       "not in this run although its suite ran (an interrupted run?)")
        return Row(name, b and b.value, c and c.value, None, None, MISSING,
                   "not in the baseline" if b is None else "not in this run")
    if b.value is None or c.value is None:
        if b.value is None and c.value is None:
            return Row(name, None, None, None, None, OK, f"null in both: {c.reason}")
        why = f"null now: {c.reason}" if c.value is None else f"a value now; baseline null: {b.reason}"
        return Row(name, b.value, c.value, None, None, REGRESSION, why)
    delta = c.value - b.value
    status = None
    if name in tolerances:
        tol, how = tolerances[name], "given"
    elif mode == "exact":
        tol, how, status = check_rules.exact(name, b, c)
    elif mode == "portable":
        tol, how, status = check_rules.portable(name, b, c)
    else:
        tol, how = check_rules.statistical(name, b)
    if tol is None:
        return Row(name, b.value, c.value, delta, None, NOT_CHECKABLE, how)
    if status is None:
        status = REGRESSION if abs(delta) > tol else OK
    better = registry.spec(name).higher_is_better
    if one_sided and status == REGRESSION and better is not None and (delta > 0 if better else delta < 0):
        status = IMPROVED  # --one-sided: moved the way the metric declares better
    return Row(name, b.value, c.value, delta, tol, status, how)


def compare(base: Results, cur: Results, tolerances: dict[str, float] | None = None,
            exact: bool = False, strict: bool = False, statistical: bool = False, one_sided: bool = False,
            run_name: str | None = None) -> Report:
    """Compare metric by metric (the caller has checked that the two are comparable); with
    ``statistical`` as independent samples whatever the fingerprints; with ``one_sided`` a metric
    beyond its tolerance in its ``higher_is_better`` direction is ``improved``, not a regression
    (a metric with no direction stays two-sided)."""
    tolerances = tolerances or {}
    names = list(base.metrics) + [m for m in cur.metrics if m not in base.metrics]
    if not set(base.metrics) & set(cur.metrics):
        raise BenchError("not compared: the run and the baseline have no metric in common")
    fast = fast_path_differences(base, cur)
    rows, modes, moved = [], set(), {}
    for name in names:
        if fast or statistical:
            mode = "statistical"
        elif exact and not (d := fingerprint_differences(base, cur, name)):
            mode = "exact"
        else:
            mode = "portable"
            if exact:
                moved.setdefault(tuple(d), []).append(name)
        modes.add(mode)
        rows.append(_row(name, base.metrics.get(name), cur.metrics.get(name), mode, tolerances,
                         name not in cur.metrics and _ran(cur, name), one_sided))
    notes = []
    if fast:
        notes.append("fast paths differ, so the statistical rules apply: " + ", ".join(fast))
    for diffs, which in moved.items():
        notes.append(f"--exact: the fingerprint differs ({', '.join(diffs)}), so {len(which)} metric(s) are "
                     "compared by the portable (paired) rules")
    if not exact and not fast and not statistical and (d := fingerprint_differences(base, cur)):
        notes.append("platform or versions differ (paired rules hold): " + ", ".join(d))
    return Report(rows, notes, "/".join(sorted(modes)) or "portable", run_name or label(cur), strict)


def check(run_dir, baseline, tolerance_items=(), exact: bool = False, strict: bool = False,
          statistical: bool = False, one_sided: bool = False, cur: Results | None = None) -> Report:
    """``bench check``: read both (a bad baseline is refused; ``cur``: the run, read already),
    parse --tolerance, refuse runs that are not the same evaluation, compare."""
    base = _read(baseline, "baseline")
    cur = _read(run_dir, "run") if cur is None else cur
    tolerances = parse_tolerances(tolerance_items, known() | set(base.metrics) | set(cur.metrics))
    diffs = setting_differences(base, cur)
    if diffs:
        raise BenchError(f"not compared: {len(diffs)} setting(s) differ from the baseline's: " + "; ".join(diffs))
    if exact and statistical:
        raise BenchError("--exact and --statistical exclude each other")
    return compare(base, cur, tolerances, exact, strict, statistical, one_sided, run_label(run_dir, cur))
