"""Regression check of a run against a baseline results.json (``bench check``).

Only comparable runs are compared: the settings that change a number must match the baseline's:
``model.sha256`` (the checkpoint), ``model.dataset`` and every key of ``run.config`` (what the
runner records as "every setting that changes a number": seed, eps, n_eval, n_gen, ...).  Where
they differ, ``check`` names the differing settings and stops with exit code 2: a mismatch is bad
input, not a regression.  A setting newer than the baseline (absent from its ``run.config``) is
compared as its default value, which is what the older run used.

Two modes.

Exact (``--exact``): for a rerun on the baseline's own platform (``run.platform``: machine, OS,
Python, torch, CPU or GPU model, torch threads) with the same library versions (``run.versions``)
and fast paths.  Every metric is deterministic there (same seed, same random streams, same
kernels, same summation order), so every metric must reproduce the baseline to 1e-6 relative
(``EXACT_REL``; a baseline value of 0 must stay exactly 0).  Any real change to the computation
moves some digit and fails.  A run or baseline without a platform record (made before bench
recorded one), or a platform, version or fast path that differs, is refused with exit code 2: the
numbers may legitimately differ in their last digits there, so exact mode cannot decide.

Statistical (the default; other machines, other versions, fast paths): versions, platform and the
fast paths (``channels_last``, ``amp``, ``compile``: bench.fastpath) may differ and are noted; a
metric fails when ``|current - baseline| > tolerance``, either way, with tolerances grounded in
sampling error.  K = 3 standard errors *of the difference* of two independent estimates, which is
sqrt(2) x the standard error of one run: a code change that only redraws the randomness (other
attack starts, other SGLD chains) leaves each metric inside its tolerance with probability about
99.7%, so a dozen metrics raise a false alarm about 3% of the time.

Each metric declares its rule where its group is registered (``bench.metrics.Metric``: its
``tolerance`` and ``range``); this module applies the rules.  Today's declarations:

- ``proportion``: accuracy, pgd20, pgd20_energy, autoattack, accuracy_aa, pgd20_aa, landscape_center_is_min,
  diverged_fraction (proportions):
  K sqrt(2) sqrt(p(1-p)/n) at the baseline's p and n, with p smoothed to (np + 1)/(n + 2) so
  that a proportion at 0 or 1 (pgd20 of an undefended model) still tolerates a few examples;
  floor 0.001.
- ``ece``: ece, ece_fgsm: the delta-method standard error of ECE = sum_b |sum_{i in b}(ok_i - conf_i)| / n
  with the confidences fixed: sqrt(sum_b n_b a_b (1 - a_b)) / n from the per-bin counts n_b and
  accuracies a_b the run records (a_b smoothed as above); without bins, sqrt(a(1-a)/n) at the
  overall accuracy a (0.5 if unknown, the worst case).  Times K sqrt(2); floor 0.002.
- ``relative``: fid, is_mean: 10% relative; is_std (itself the spread of a few splits): 25% relative.
  FID and IS have no simple closed-form standard error and FID's bias depends on n, which the
  settings check holds fixed.
- ``standard-error``: jfs, mfs: K sqrt(2) std.  The ``std`` bench records for them is already the standard error of
  the mean over points, sd / sqrt(n) (``bench.metrics.fisher.STD_NOTE``), Hutchinson probe
  noise included, so it is not divided by sqrt(n) again.  Floor 1% of |baseline|; without a
  recorded std, 10% relative.
- ``standard-error`` (no floor): landscape_flatness, landscape_min_offset, nll, brier (and their ``_ts``, ``_fgsm`` variants):
  means over points, K sqrt(2) std (the recorded standard error of the mean).
- ``absolute``: ssim_nn: 0.02 absolute; denoise_psnr, denoise_psnr_noisy: 0.5 dB; denoise_ssim,
  denoise_ssim_noisy: 0.02; each widened to K sqrt(2) std where the recorded standard error
  (sd / sqrt(n)) makes that larger.

A metric such a tolerance cannot bound is "not checkable" (reported and counted, neither ok nor a
failure): one computed on fewer than ``MIN_N`` points (a standard error from a handful of points is
itself too uncertain: the default landscape's 4 images), one whose tolerance spans half its whole
range or more (a proportion's tolerance >= 0.5: it would pass anything), and a metric whose rule is
``none`` or that no group declares (no loose default is invented for it; exact mode compares it
like any other).

Both modes: a metric null in both runs is ok (its reason noted); null in one only is a regression
(a value lost, e.g. after an error or out of memory, or one that appeared).  A metric absent from
one side (its suite was not run) is reported as ``missing`` and does not fail.
``--tolerance NAME=ABS`` replaces a metric's tolerance, in either mode, by an absolute tolerance
in the same units.

This module decides (tolerances, comparability, the status of each metric); the ``Report`` and
its forms (text, Markdown, JUnit XML) are ``bench.check_output``'s.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from bench import fastpath, registry, results
from bench.check_output import MISSING, NOT_CHECKABLE, OK, REGRESSION, Report, Row
from bench.check_output import write_outputs as write_outputs  # the CLI's --junit/--markdown, re-exported
from bench.errors import BenchError
from bench.results import Result, Results
from bench.settings import DEFAULTS

EXACT_REL = 1e-6
K = 3.0
DIFF = math.sqrt(2.0)  # standard error of a difference of two independent estimates, per unit SE
MIN_N = 30  # fewer points: a standard error (or a normal approximation) bounds nothing

def known() -> set[str]:
    """Every metric with a statistical rule (also valid in --tolerance when neither run has it)."""
    return {sp.name for sp in registry.declared() if not sp.is_pattern and sp.tolerance.rule != "none"}


def _smoothed(p: float, n: int) -> float:
    return (p * n + 1) / (n + 2)


def _ece_se(r: Result) -> float:
    n = max(int(r.n or 0), 1)
    bins = (r.details or {}).get("bins") or {}
    counts, accs = bins.get("count"), bins.get("accuracy")
    if isinstance(counts, list) and isinstance(accs, list) and len(counts) == len(accs) and sum(counts) > 0:
        var = sum(c * _smoothed(a, c) * (1 - _smoothed(a, c)) for c, a in zip(counts, accs, strict=True)
                  if c and a is not None)
        return math.sqrt(var) / sum(counts)
    a = bins.get("avg_accuracy")
    a = 0.5 if not isinstance(a, int | float) else _smoothed(float(a), n)
    return math.sqrt(a * (1 - a) / n)


def _has_std(std) -> bool:
    return std is not None and math.isfinite(std)


def _rule(name: str, base: Result) -> tuple[float | None, str]:
    """The statistical tolerance of ``name`` by its declared rule (bench.metrics.Tolerance),
    before the checkability test."""
    v, n, std = base.value, int(base.n or 0), base.std
    t = registry.spec(name).tolerance
    if t.rule == "proportion" and n > 0 and 0 <= v <= 1:
        p = _smoothed(v, n)
        return max(K * DIFF * math.sqrt(p * (1 - p) / n), t.floor), f"3 SE of a proportion at n={n}"
    if t.rule == "ece" and n > 0:
        return max(K * DIFF * _ece_se(base), t.floor), f"3 SE of ECE at n={n}"
    if t.rule == "relative":
        return t.margin * abs(v) + 1e-9, f"{t.margin:.0%} relative"
    if t.rule == "standard-error":
        if _has_std(std):
            return max(K * DIFF * std, t.floor_rel * abs(v), 1e-9), "3 SE from the recorded std"
        if t.margin is not None:
            return t.margin * abs(v) + 1e-9, f"{t.margin:.0%} relative (no std recorded)"
        return None, "no standard error recorded"
    if t.rule == "absolute":
        if _has_std(std) and K * DIFF * std > t.margin:
            return K * DIFF * std, "3 SE from the recorded std"
        return t.margin, "absolute"
    if t.rule == "proportion":
        return None, f"not a proportion at n={n}"
    return None, "no statistical tolerance is defined for this metric (--exact compares it; or give --tolerance)"


def default_tolerance(name: str, base: Result) -> tuple[float | None, str]:
    """(tolerance, how it was derived) for metric ``name`` in statistical mode, from the baseline's
    record; (None, why) for a metric that is not checkable (see the module docstring)."""
    if base.value is None:
        return None, "no baseline value"
    n = int(base.n or 0)
    tol, how = _rule(name, base)
    if tol is None:
        return None, how
    if n < MIN_N:
        return None, f"at n={n}: fewer than {MIN_N} points (tolerance would be {tol:.3g})"
    width = registry.spec(name).range
    if width is not None and tol >= width / 2:
        return None, f"at n={n}: the tolerance {tol:.3g} spans half the metric's range or more"
    return tol, how


def exact_tolerance(base: Result) -> tuple[float, str]:
    return EXACT_REL * abs(base.value), f"exact ({EXACT_REL:g} relative)"


_TOL = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*=\s*(\S+)\s*$")


def parse_tolerances(items, names) -> dict[str, float]:
    """``NAME=ABS`` strings -> {name: abs}.  Bad syntax, a negative or non-finite tolerance and a
    name that is no metric (of ``known()`` or of either run) raise BenchError."""
    out = {}
    for item in items or ():
        m = _TOL.match(item)
        if not m:
            raise BenchError(f"--tolerance {item!r}: expected NAME=ABS, e.g. accuracy=0.01")
        name, raw = m.groups()
        try:
            tol = float(raw)
        except ValueError:
            raise BenchError(f"--tolerance {item!r}: {raw!r} is not a number") from None
        if not math.isfinite(tol) or tol < 0:
            raise BenchError(f"--tolerance {item!r}: the tolerance must be a finite number >= 0")
        if name not in names:
            raise BenchError(f"--tolerance {item!r}: unknown metric {name!r} (known: {', '.join(sorted(names))})")
        out[name] = tol
    return out


def setting_differences(base: Results, cur: Results) -> list[str]:
    """The settings that change a number and differ: model sha256 and dataset, run.config keys."""
    diffs = []
    for key in ("sha256", "dataset"):
        b, c = base.model.get(key), cur.model.get(key)
        if b != c:
            diffs.append(f"model.{key} (baseline {_show(b)}, current {_show(c)})")
    bc, cc = base.run.get("config") or {}, cur.run.get("config") or {}
    if not isinstance(bc, dict) or not isinstance(cc, dict):
        return diffs + ["run.config is not an object"]
    for key in sorted((set(bc) | set(cc)) - set(fastpath.SETTINGS)):
        b, c = _setting(bc, key), _setting(cc, key)
        if b != c:
            shown = [_show(v) + (" (absent: its default)" if key not in d and key in DEFAULTS else "")
                     for v, d in ((b, bc), (c, cc))]
            diffs.append(f"run.config.{key} (baseline {shown[0]}, current {shown[1]})")
    return diffs


def _setting(config: dict, key: str):
    """A run's setting; one the run predates counts as its default (what that run used)."""
    return config.get(key, DEFAULTS.get(key, "<absent>"))


def _show(v) -> str:
    if isinstance(v, str):
        return v[:16] + "..." if len(v) == 64 else v  # a sha256: its head
    return repr(v)


def _record(run: dict, key: str) -> dict:
    v = run.get(key)
    return v if isinstance(v, dict) else {}


def environment_differences(base: Results, cur: Results) -> list[str]:
    """Platform, versions and fast paths that differ (``platform.threads 1 -> 2``)."""
    out = []
    for key in ("platform", "versions"):
        b, c = _record(base.run, key), _record(cur.run, key)
        # a version the baseline does not record at all (made before bench recorded it) is not compared
        keys = sorted(set(b) | set(c)) if key == "platform" else sorted(b)
        out += [f"{key}.{k} {b.get(k)!r} -> {c.get(k)!r}" for k in keys if b.get(k) != c.get(k)]
    bc, cc = base.run.get("config") or {}, cur.run.get("config") or {}
    if isinstance(bc, dict) and isinstance(cc, dict):
        out += [f"{k} {b!r} -> {c!r}" for k in fastpath.SETTINGS if (b := _setting(bc, k)) != (c := _setting(cc, k))]
    return out


def exact_refusal(base: Results, cur: Results) -> str | None:
    """Why exact mode cannot compare these two runs (None: it can)."""
    for res, what, fix in ((base, "the baseline", "regenerate the baseline (bench run) with this version of bench"),
                           (cur, "the run", "rerun it with this version of bench")):
        if not _record(res.run, "platform"):
            return f"--exact: {what} has no platform record (made before bench recorded one): {fix}"
    diffs = environment_differences(base, cur)
    if diffs:
        return (f"--exact needs the baseline's platform, versions and fast paths; {len(diffs)} differ: "
                + ", ".join(diffs) + " (compare without --exact across machines)")
    return None


def _read(path, what: str) -> Results:
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
        if not p.is_file():
            raise BenchError(f"{what} {path}: no results.json in it")
    elif not p.exists():
        raise BenchError(f"{what} {path}: no such file or directory")
    res = results.read(p)
    if not isinstance(res.model, dict) or not isinstance(res.run, dict):
        raise BenchError(f"{p}: malformed results file (model and run must be objects)")
    return res


def label(res: Results, fallback: str = "run") -> str:
    """A short name for what was checked: ``digits-jeat`` (data set and method), else ``fallback``."""
    parts = [str(res.model.get(k)) for k in ("dataset", "method") if res.model.get(k)]
    return "-".join(parts) or fallback


def compare(base: Results, cur: Results, tolerances: dict[str, float] | None = None,
            exact: bool = False) -> Report:
    """Compare metric by metric (the caller has checked the settings, and for ``exact`` the
    platform, match)."""
    tolerances = tolerances or {}
    rows = []
    for name in list(base.metrics) + [m for m in cur.metrics if m not in base.metrics]:
        b, c = base.metrics.get(name), cur.metrics.get(name)
        if b is None or c is None:
            rows.append(Row(name, b and b.value, c and c.value, None, None, MISSING,
                            "not in the baseline" if b is None else "not in this run"))
            continue
        if b.value is None or c.value is None:
            if b.value is None and c.value is None:
                rows.append(Row(name, None, None, None, None, OK, f"null in both: {c.reason}"))
            else:
                why = f"null now: {c.reason}" if c.value is None else f"a value now; baseline null: {b.reason}"
                rows.append(Row(name, b.value, c.value, None, None, REGRESSION, why))
            continue
        if name in tolerances:
            tol, how = tolerances[name], "given"
        else:
            tol, how = exact_tolerance(b) if exact else default_tolerance(name, b)
        delta = c.value - b.value
        if tol is None:
            rows.append(Row(name, b.value, c.value, delta, None, NOT_CHECKABLE, how))
            continue
        rows.append(Row(name, b.value, c.value, delta, tol, REGRESSION if abs(delta) > tol else OK, how))
    notes = []
    diffs = environment_differences(base, cur)
    if diffs:
        notes.append("platform, versions or fast paths differ (allowed): " + ", ".join(diffs))
    return Report(rows, notes, "exact" if exact else "statistical", label(cur))


def check(run_dir, baseline, tolerance_items=(), exact: bool = False) -> Report:
    """``bench check``: read both, parse --tolerance, refuse differing settings (and, for
    ``exact``, a differing platform), compare."""
    base = _read(baseline, "baseline")
    cur = _read(run_dir, "run")
    tolerances = parse_tolerances(tolerance_items, known() | set(base.metrics) | set(cur.metrics))
    diffs = setting_differences(base, cur)
    if diffs:
        raise BenchError(f"not compared: {len(diffs)} setting(s) differ from the baseline's: " + "; ".join(diffs))
    if exact and (why := exact_refusal(base, cur)):
        raise BenchError(why)
    return compare(base, cur, tolerances, exact)

