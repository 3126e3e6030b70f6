"""Run the regression cases (results/baseline/cases.json): `bench run` on each released checkpoint
with its suites and arguments, one CPU thread per process, several processes side by side.

    python tools/make_baselines.py                     # the baselines: results/baseline/<case>.json
    python tools/make_baselines.py --out runs/sim-default --env ATEN_CPU_CAPABILITY=default
                                                       # the same runs on a simulated other machine
    python tools/make_baselines.py --add shift          # a new suite (or group) added to the baselines

Each case runs `python -m bench run ... --out OUT/<case>`; without --out the results.json of each
is then copied to results/baseline/<case>.json.  The wall time of each case is printed.

`--add NAME` (a suite or a group): for every case whose suites include NAME (directly or through
`all`), run only NAME's suite with the case's own arguments and seed, and merge the metrics of the
groups the baseline lacks into results/baseline/<case>.json (with --out: into OUT/<case>.json):
their metrics, `run.groups` records (with the platform they were computed on, which `bench check
--exact` reads), `run.code_sha256` digests and the `run.config` settings they declare that the
baseline predates.  Nothing else moves: every key and value the baseline held is kept as it was
(checked before writing), so its diff shows only additions.  Refused (exit 2, nothing written):
another model, data, library version or setting than the baseline's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this tree's bench, which the runs (python -m bench, cwd ROOT) use too
from tools.baseline_add import AddError, add_case, cases_with, resolve  # noqa: E402

BASELINES = ROOT / "results" / "baseline"
CASES = json.loads((BASELINES / "cases.json").read_text())["cases"]


def command(case: dict, out: Path) -> list[str]:
    return [sys.executable, "-m", "bench", "run", "--model", case["model"], "--suite", case["suites"],
            *case["args"], "--seed", "0", "--device", "cpu", "--out", str(out), "--no-resume"]


def run_case(name: str, out_root: Path, env: dict, threads: int, case: dict | None = None,
             stem: str | None = None) -> tuple[str, float, int]:
    """Run case ``name`` (or ``case``, its settings) into ``out_root/stem`` (default: the name)."""
    out = out_root / (stem or name)
    t0 = time.time()
    proc = subprocess.run(command(case or CASES[name], out), cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, **env, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                                   CI="true"))
    (out_root / f"{stem or name}.log").write_text(proc.stdout + proc.stderr)
    return name, time.time() - t0, proc.returncode


def add(name: str, baselines: Path, cases: dict, asked: list[str], out_root: Path, write_to: Path,
        env: dict, threads: int, jobs: int) -> int:
    """``--add NAME``: run NAME's suite for each case that includes it, merge into its baseline."""
    suite, groups = resolve(name)
    chosen = cases_with(cases, suite, asked)
    out_root.mkdir(parents=True, exist_ok=True)
    stem = f"add-{name}"
    failed = refused = 0
    with ThreadPoolExecutor(jobs) as pool:
        runs = pool.map(lambda c: run_case(c, out_root, env, threads, dict(cases[c], suites=suite), f"{c}.{stem}"),
                        chosen)
        for case, seconds, rc in runs:
            print(f"{case} --suite {suite}: {seconds:.0f} s, exit {rc}", flush=True)
            if rc != 0:
                failed += 1
                print(f"{case}: not merged (the run failed: {out_root / f'{case}.{stem}.log'})", flush=True)
                continue
            try:
                print(add_case(baselines / f"{case}.json", out_root / f"{case}.{stem}" / "results.json", groups,
                               write_to / f"{case}.json"), flush=True)
            except AddError as e:
                refused += 1
                print(f"error: {e}", file=sys.stderr, flush=True)
    return 2 if refused else 1 if failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="write the runs here instead of making the baselines")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="environment of the runs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    ap.add_argument("--jobs", type=int, default=2, help="runs side by side (default 2)")
    ap.add_argument("--add", metavar="NAME", help="run only this suite or group for the cases that include it and "
                    "add its metrics to their baselines (nothing else moves)")
    ap.add_argument("--baselines", type=Path, default=BASELINES,
                    help="with --add: the folder of cases.json and the baselines (default results/baseline)")
    ap.add_argument("cases", nargs="*", help="cases to run (default: all)")
    a = ap.parse_args()
    env = dict(e.split("=", 1) for e in a.env)
    if a.add is not None:
        cases = json.loads((a.baselines / "cases.json").read_text())["cases"]
        out_root = a.out or ROOT / "runs" / "baselines"
        try:
            return add(a.add, a.baselines, cases, a.cases, out_root, a.out or a.baselines, env, a.threads, a.jobs)
        except AddError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    names = a.cases or list(CASES)
    out_root = a.out or ROOT / "runs" / "baselines"
    out_root.mkdir(parents=True, exist_ok=True)
    failed = 0
    with ThreadPoolExecutor(a.jobs) as pool:
        for name, seconds, rc in pool.map(lambda n: run_case(n, out_root, env, a.threads), names):
            print(f"{name}: {seconds:.0f} s, exit {rc}", flush=True)
            failed += rc != 0
            if rc == 0 and a.out is None:
                shutil.copyfile(out_root / name / "results.json", ROOT / "results" / "baseline" / f"{name}.json")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
