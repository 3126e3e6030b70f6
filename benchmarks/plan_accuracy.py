"""How close the run's plan comes: each group's estimate against its measured seconds.

For each released model it runs ``bench run --model M --suite all --out OUT/M`` (plus any extra
``bench run`` options after ``--``), keeps what the run printed in ``OUT/M/run.log`` and prints a
table: per group the plan's estimate (the line the run printed before its first group), the
measured ``seconds`` of the group in results.json and their ratio estimate / measured.  The
generated set's own plan line is added to the group that makes it (``is_fid``), whose seconds
include it.  Groups the plan could not estimate (``cost unknown``) or found cached are listed
without a ratio.  The last line says whether every estimated group is within the factor
(``--within``, 2 by default).  ``--from-runs`` reads finished runs (OUT/M/run.log and
results.json) instead of running them again.

    python benchmarks/plan_accuracy.py [--models digits-jeat,fmnist-jeat] [--out runs/plan-accuracy]
        [--within 2] [--from-runs] [-- --device cpu --n-eval 200 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0, "days": 86400.0}
LINE = re.compile(r"^\s+\[(?P<suite>[\w-]+)\] (?P<group>\(generated set\)|\S+)\s+"
                  r"(?:(?P<cached>cached)|(?P<unknown>cost unknown)|(?P<value>[\d.]+) (?P<unit>s|min|h|days)\b)")
GENERATED = "(generated set)"


def plan_estimates(log: str) -> dict[str, float | None]:
    """group -> estimated seconds (None: cost unknown or cached) from a run's printed plan; the
    generated set's seconds go to the next group (the one that needs it)."""
    out, pending = {}, 0.0
    for line in log.splitlines():
        m = LINE.match(line)
        if m is None:
            if out and line.startswith("  total about"):
                break
            continue
        sec = float(m["value"]) * UNITS[m["unit"]] if m["value"] else None
        if m["group"] == GENERATED:
            pending += sec or 0.0
            continue
        out[m["group"]] = None if sec is None else sec + pending
        pending = 0.0 if sec is not None else pending
    return out


def measured(results: dict) -> dict[str, float | None]:
    """group -> the seconds results.json records for it (each metric of a group carries the group's)."""
    out = {}
    for g, info in results["run"]["groups"].items():
        names = [m for m in info.get("metrics", []) if m in results["metrics"]]
        secs = [results["metrics"][m].get("seconds") for m in names]
        out[g] = next((s for s in secs if s is not None), None)
    return out


def table(model: str, est: dict, got: dict, within: float) -> tuple[list[str], bool]:
    rows = [f"{model}:", "", "| group | estimate (s) | measured (s) | ratio |", "|---|---:|---:|---:|"]
    ok, tot_e, tot_m = True, 0.0, 0.0
    for g, m in got.items():
        e = est.get(g)
        if e is None or m is None or e <= 0:
            rows.append(f"| {g} | {'-' if e is None else f'{e:.1f}'} | {'-' if m is None else f'{m:.1f}'} | - |")
            continue
        r = e / m if m > 0 else float("inf")
        ok &= 1 / within <= r <= within
        tot_e, tot_m = tot_e + e, tot_m + m
        flag = "" if 1 / within <= r <= within else f" (outside {within:g}x)"
        rows.append(f"| {g}{' (+ generated set)' if g == 'is_fid' else ''} | {e:.1f} | {m:.1f} | {r:.2f}{flag} |")
    if tot_e:
        rows.append(f"| total of groups | {tot_e:.0f} | {tot_m:.0f} | {tot_e / tot_m:.2f} |")
    return rows, ok


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="digits-jeat,fmnist-jeat")
    ap.add_argument("--out", default="runs/plan-accuracy")
    ap.add_argument("--within", type=float, default=2.0, help="the factor every group's ratio must lie within")
    ap.add_argument("--from-runs", action="store_true", help="read OUT/MODEL/run.log and results.json; run nothing")
    a = ap.parse_args(argv)
    all_ok = True
    for model in [m.strip() for m in a.models.split(",") if m.strip()]:
        out = Path(a.out) / model
        if not a.from_runs:
            out.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "bench", "run", "--model", model, "--suite", "all", "--out", str(out),
                   "--no-resume", *extra]
            env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
            with open(out / "run.log", "w") as f:
                p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
            if p.returncode:
                print(f"error: {' '.join(cmd)} failed (exit {p.returncode}); see {out / 'run.log'}", file=sys.stderr)
                return 2
        est = plan_estimates((out / "run.log").read_text())
        got = measured(json.loads((out / "results.json").read_text()))
        rows, ok = table(model, est, got, a.within)
        print("\n".join(rows) + "\n")
        all_ok &= ok
    print(f"every estimated group within {a.within:g}x: {'yes' if all_ok else 'no'}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
