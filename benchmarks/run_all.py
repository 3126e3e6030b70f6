"""Run every benchmark, each against its peer measured in the same run, and write RESULTS.md.

    python benchmarks/run_all.py [--device cpu|cuda] [--quick] [--out benchmarks/RESULTS.md]

Each ``bench_*.py`` exposes ``main(argv) -> ratio``; the table lists the ratio beside its target.
The last row is the wall time of the default ``bench run --suite all`` (fresh output directory),
whose target is an absolute time on this CPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the benchmarks import their shared `timing` module

# (module, what it compares, target ratio, extra argv)
BENCHMARKS = [
    ("bench_pgd", "PGD-20 vs torchattacks PGD (throughput)", ">= 1.0", []),
    ("bench_autoattack", "AutoAttack wrapper overhead vs pyautoattack direct (fraction of its time)", "<= 0.05", []),
    ("bench_ssim", "SSIM nearest neighbours vs scikit-image loop (pairs/s)", ">= 10", []),
    ("bench_hutchinson", "batched Hutchinson vs per-sample loop (points/s)", ">= 5", []),
    ("bench_sgld", "SGLD vs raw forward+backward (throughput)", ">= 0.9", []),
    ("bench_fid_cache", "IS/FID first run vs second (reference cache)", ">= 2", []),
    ("bench_calibration_once", "calibration suite in one run vs its four groups run apart (time; values equal)",
     "<= 0.6", []),
    ("bench_fastpaths", "best fast path vs plain path, PGD-20 throughput (GPU paths; no target on a CPU)",
     "report", []),
]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _meets(ratio: float, target: str) -> bool:
    if target == "report":
        return True
    op, value = target.split()
    return ratio >= float(value) if op == ">=" else ratio <= float(value)


def time_default_run(device: str) -> float:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "bench", "run", "--suite", "all", "--out", d, "--device", device],
                       check=True, env={**os.environ, "CI": "true"})
        return time.perf_counter() - t0


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__}, Python {platform.python_version()}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--only", default=None, help="comma-separated benchmark modules")
    ap.add_argument("--skip-run", action="store_true", help="do not time the default bench run")
    a = ap.parse_args(argv)
    rows = []
    for name, what, target, extra in BENCHMARKS:
        if a.only and name not in a.only.split(","):
            continue
        if not (HERE / f"{name}.py").is_file():
            rows.append((name, what, target, None, "missing"))
            continue
        print(f"== {name}", flush=True)
        try:
            ratio = float(_load(name).main(["--device", a.device, *extra]))
            status = "reported" if target == "report" else "met" if _meets(ratio, target) else "NOT met"
            rows.append((name, what, target, ratio, status))
        except Exception as e:  # one failing benchmark must not hide the others
            rows.append((name, what, target, None, f"failed: {type(e).__name__}: {e}"))
    if not a.skip_run and not a.only:
        print("== bench run --suite all (default model)", flush=True)
        secs = time_default_run(a.device)
        rows.append(("bench run --suite all", "wall time of the default run, seconds", "<= 180", secs,
                     "met" if secs <= 180 else "NOT met"))
    lines = [
        "# Benchmark results", "",
        f"Machine: {machine()}  ", f"Device: {a.device}  ",
        f"Date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}  ",
        "Command: `python benchmarks/run_all.py` (`tox -e perf`)", "",
        "| benchmark | comparison | target | measured | status |", "| --- | --- | --- | --- | --- |",
    ]
    for name, what, target, value, status in rows:
        shown = "-" if value is None else f"{value:.3g}"
        lines.append(f"| {name} | {what} | {target} | {shown} | {status} |")
    if a.device.startswith("cuda") and not a.only:  # paper scale needs the GPU (item 4 of the scale issue)
        print("== bench_paper_scale", flush=True)
        for fast in ([], ["--fast"]):
            with tempfile.NamedTemporaryFile("r", suffix=".md") as f:
                _load("bench_paper_scale").main(["--device", a.device, "--out", f.name, *fast])
                lines += ["", "## Paper scale (WRN-28-10, CIFAR-10-shaped data)", "", f.read()]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(a.out).write_text(text)
    return 0 if all(r[4] in ("met", "reported") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
