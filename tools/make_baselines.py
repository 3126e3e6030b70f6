"""Run the regression cases (results/baseline/cases.json): `bench run` on each released checkpoint
with its suites and arguments, one CPU thread per process, several processes side by side.

    python tools/make_baselines.py                     # the baselines: results/baseline/<case>.json
    python tools/make_baselines.py --out runs/sim-default --env ATEN_CPU_CAPABILITY=default
                                                       # the same runs on a simulated other machine

Each case runs `python -m bench run ... --out OUT/<case>`; without --out the results.json of each
is then copied to results/baseline/<case>.json.  The wall time of each case is printed.
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
CASES = json.loads((ROOT / "results" / "baseline" / "cases.json").read_text())["cases"]


def command(case: dict, out: Path) -> list[str]:
    return [sys.executable, "-m", "bench", "run", "--model", case["model"], "--suite", case["suites"],
            *case["args"], "--seed", "0", "--device", "cpu", "--out", str(out), "--no-resume"]


def run_case(name: str, out_root: Path, env: dict, threads: int) -> tuple[str, float, int]:
    out = out_root / name
    t0 = time.time()
    proc = subprocess.run(command(CASES[name], out), cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, **env, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                                   CI="true"))
    (out_root / f"{name}.log").write_text(proc.stdout + proc.stderr)
    return name, time.time() - t0, proc.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="write the runs here instead of making the baselines")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="environment of the runs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    ap.add_argument("--jobs", type=int, default=2, help="runs side by side (default 2)")
    ap.add_argument("cases", nargs="*", help="cases to run (default: all)")
    a = ap.parse_args()
    env = dict(e.split("=", 1) for e in a.env)
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
