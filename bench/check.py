"""Regression check of a run against a baseline results.json (``bench check``).

Only comparable runs are compared: the settings that change a number must match the baseline's:
``model.sha256`` (the checkpoint), ``model.dataset`` and every key of ``run.config`` (what the
runner records as "every setting that changes a number": seed, eps, n_eval, n_gen, ...).  Where
they differ, ``check`` names the differing settings and stops with exit code 2: a mismatch is bad
input, not a regression.  Library versions, the device and the fast paths (``channels_last``,
``amp``, ``compile``: bench.fastpath) may differ, and are noted; they are what the tolerances below
absorb, so ``bench check`` of a fast-path run against a plain baseline is the check that the fast
path moves no metric beyond its tolerance.  A setting newer than the baseline (absent from its
``run.config``) is compared as its default value, which is what the older run used.

Rule.  A metric fails when ``|current - baseline| > tolerance``, in either direction.  With the
settings (seed included) equal, a rerun of unchanged code reproduces the baseline up to
floating-point noise; a change beyond sampling error either way means the computation changed,
and an improvement is flagged as well, so that a baseline is renewed deliberately rather than
drifting.  A metric the baseline has a value for but the current run records as null (for
example after an error or out of memory) fails too.  A metric absent from one side (its suite was
not run) is reported as ``missing``; one null in the baseline is reported as ``null``; neither
fails.

Default tolerances (in the units of results.json: accuracies and ECE as fractions), grounded in
sampling error.  K = 3 standard errors *of the difference* of two independent estimates, which is
sqrt(2) x the standard error of one run: a code change that only redraws the randomness (other
attack starts, other SGLD chains) leaves each metric inside its tolerance with probability about
99.7%, so a dozen metrics raise a false alarm about 3% of the time.

- accuracy, pgd20, pgd20_energy, autoattack (and landscape_center_is_min, also a proportion):
  K sqrt(2) sqrt(p(1-p)/n) at the baseline's p and n, with p smoothed to (np + 1)/(n + 2) so
  that a proportion at 0 or 1 (pgd20 of an undefended model) still tolerates a few examples;
  floor 0.001.
- ece, ece_fgsm: the delta-method standard error of ECE = sum_b |sum_{i in b}(ok_i - conf_i)| / n
  with the confidences fixed: sqrt(sum_b n_b a_b (1 - a_b)) / n from the per-bin counts n_b and
  accuracies a_b the run records (a_b smoothed as above); without bins, sqrt(a(1-a)/n) at the
  overall accuracy a (0.5 if unknown, the worst case).  Times K sqrt(2); floor 0.002.
- fid, is_mean: 10% relative; is_std (itself the spread of a few splits): 25% relative.
  FID and IS have no simple closed-form standard error and FID's bias depends on n, which the
  settings check holds fixed.
- jfs, mfs: K sqrt(2) std.  The ``std`` bench records for them is already the standard error of
  the mean over points, sd / sqrt(n) (``bench.metrics.fisher.STD_NOTE``), Hutchinson probe
  noise included, so it is not divided by sqrt(n) again.  Floor 1% of |baseline|; without a
  recorded std, 10% relative.
- ssim_nn: 0.02 absolute; denoise_psnr, denoise_psnr_noisy: 0.5 dB; denoise_ssim,
  denoise_ssim_noisy: 0.02; each widened to K sqrt(2) std where the recorded standard error
  (sd / sqrt(n)) makes that larger.
- any other metric: K sqrt(2) std where a std is recorded, else 10% relative.

``--tolerance NAME=ABS`` replaces a metric's default by an absolute tolerance in the same units.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from bench import fastpath, results
from bench.errors import BenchError
from bench.metrics import Result
from bench.results import Results
from bench.settings import DEFAULTS

K = 3.0
DIFF = math.sqrt(2.0)  # standard error of a difference of two independent estimates, per unit SE

PROPORTIONS = ("accuracy", "pgd20", "pgd20_energy", "autoattack", "landscape_center_is_min")
PROPORTION_FLOOR = 0.001
ECE = ("ece", "ece_fgsm")
ECE_FLOOR = 0.002
RELATIVE = {"fid": 0.10, "is_mean": 0.10, "is_std": 0.25}
FISHER = ("jfs", "mfs")
FISHER_FLOOR_REL = 0.01
ABSOLUTE = {"ssim_nn": 0.02, "denoise_psnr": 0.5, "denoise_psnr_noisy": 0.5, "denoise_ssim": 0.02,
            "denoise_ssim_noisy": 0.02}
OTHER_REL = 0.10
# the metric names of DESIGN.md (valid in --tolerance even when neither run has them)
KNOWN = ("accuracy", "pgd20", "pgd20_energy", "autoattack", "ece", "ece_fgsm", "is_mean", "is_std", "fid",
         "jfs", "mfs", "ssim_nn", "denoise_psnr_noisy", "denoise_psnr")


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


def default_tolerance(name: str, base: Result) -> tuple[float, str]:
    """(tolerance, how it was derived) for metric ``name`` from the baseline's record."""
    v, n, std = base.value, int(base.n or 0), base.std
    if v is None:
        return math.nan, "no baseline value"
    if name in PROPORTIONS and n > 0 and 0 <= v <= 1:
        p = _smoothed(v, n)
        return max(K * DIFF * math.sqrt(p * (1 - p) / n), PROPORTION_FLOOR), f"3 SE of a proportion at n={n}"
    if name in ECE and n > 0:
        return max(K * DIFF * _ece_se(base), ECE_FLOOR), f"3 SE of ECE at n={n}"
    if name in RELATIVE:
        return RELATIVE[name] * abs(v) + 1e-9, f"{RELATIVE[name]:.0%} relative"
    if name in FISHER:
        if std is not None and math.isfinite(std):
            return max(K * DIFF * std, FISHER_FLOOR_REL * abs(v), 1e-9), "3 SE from the recorded std"
        return OTHER_REL * abs(v) + 1e-9, f"{OTHER_REL:.0%} relative (no std recorded)"
    if name in ABSOLUTE:
        if std is not None and math.isfinite(std) and K * DIFF * std > ABSOLUTE[name]:
            return K * DIFF * std, "3 SE from the recorded std"
        return ABSOLUTE[name], "absolute"
    if std is not None and math.isfinite(std) and std > 0:
        return K * DIFF * std, "3 SE from the recorded std"
    return OTHER_REL * abs(v) + 1e-9, f"{OTHER_REL:.0%} relative"


_TOL = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*=\s*(\S+)\s*$")


def parse_tolerances(items, names) -> dict[str, float]:
    """``NAME=ABS`` strings -> {name: abs}.  Bad syntax, a negative or non-finite tolerance and a
    name that is no metric (of DESIGN.md or of either run) raise BenchError."""
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


@dataclass
class Row:
    metric: str
    baseline: float | None
    current: float | None
    delta: float | None
    tolerance: float | None
    status: str  # ok | REGRESSION | missing | null
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "REGRESSION"


@dataclass
class Report:
    rows: list[Row]
    notes: list[str] = field(default_factory=list)  # e.g. differing versions (not compared)

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.failed]

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions else 0

    def format(self) -> str:
        head = ("metric", "baseline", "current", "delta", "tolerance", "status")
        body = [(r.metric, _f(r.baseline), _f(r.current), _f(r.delta, sign=True), _f(r.tolerance),
                 r.status + (f"  ({r.note})" if r.note else "")) for r in self.rows]
        widths = [max(len(x[i]) for x in [head, *body]) for i in range(5)]
        lines = ["  ".join(x[i].ljust(widths[i]) if i == 0 else x[i].rjust(widths[i]) for i in range(5))
                 + "  " + x[5] for x in [head, *body]]
        counts = {s: sum(r.status == s for r in self.rows) for s in ("ok", "REGRESSION", "missing", "null")}
        lines.append(f"{counts['ok']} ok, {counts['REGRESSION']} regression(s), {counts['missing']} missing, "
                     f"{counts['null']} null")
        return "\n".join(self.notes + lines)


def _f(v, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:+.4g}" if sign else f"{v:.4g}"


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


def compare(base: Results, cur: Results, tolerances: dict[str, float] | None = None) -> Report:
    """Compare metric by metric (the caller has checked the settings match)."""
    tolerances = tolerances or {}
    rows = []
    for name in list(base.metrics) + [m for m in cur.metrics if m not in base.metrics]:
        b, c = base.metrics.get(name), cur.metrics.get(name)
        if b is None or c is None:
            rows.append(Row(name, b and b.value, c and c.value, None, None, "missing",
                            "not in the baseline" if b is None else "not in this run"))
            continue
        if b.value is None:
            rows.append(Row(name, None, c.value, None, None, "null", f"baseline: {b.reason}"))
            continue
        tol, how = (tolerances[name], "given") if name in tolerances else default_tolerance(name, b)
        if c.value is None:
            rows.append(Row(name, b.value, None, None, tol, "REGRESSION", f"null now: {c.reason}"))
            continue
        delta = c.value - b.value
        rows.append(Row(name, b.value, c.value, delta, tol, "REGRESSION" if abs(delta) > tol else "ok", how))
    notes = []
    bv, cv = base.run.get("versions") or {}, cur.run.get("versions") or {}
    if isinstance(bv, dict) and isinstance(cv, dict):
        dv = [f"{k} {bv.get(k)} -> {cv.get(k)}" for k in sorted(set(bv) | set(cv)) if bv.get(k) != cv.get(k)]
        if dv:
            notes.append("versions differ (allowed): " + ", ".join(dv))
    bc, cc = base.run.get("config") or {}, cur.run.get("config") or {}
    if isinstance(bc, dict) and isinstance(cc, dict):
        df = [f"{k} {b!r} -> {c!r}" for k in fastpath.SETTINGS
              if (b := _setting(bc, k)) != (c := _setting(cc, k))]
        if df:
            notes.append("fast paths differ (allowed): " + ", ".join(df))
    return Report(rows, notes)


def check(run_dir, baseline, tolerance_items=()) -> Report:
    """``bench check``: read both, parse --tolerance, refuse differing settings, compare."""
    base = _read(baseline, "baseline")
    cur = _read(run_dir, "run")
    tolerances = parse_tolerances(tolerance_items, set(KNOWN) | set(base.metrics) | set(cur.metrics))
    diffs = setting_differences(base, cur)
    if diffs:
        raise BenchError(f"not compared: {len(diffs)} setting(s) differ from the baseline's: " + "; ".join(diffs))
    return compare(base, cur, tolerances)
