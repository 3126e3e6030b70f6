"""GPU check: every suite run once through ``bench``'s own runner at a reduced paper scale on
WRN-28-10 (random weights: cost only, the numbers mean nothing), each metric group timed and its
FLOPs counted, against the device's FLOP bound.

    python benchmarks/gpu_check.py                 # CUDA: WRN-28-10, CIFAR-shaped data (under 8 min on an H100)
    python benchmarks/gpu_check.py --tiny          # CPU smoke run of the same code: WRN-10-1, a few points
    python benchmarks/gpu_check.py --out check.md  # also write the table as Markdown

The script writes a CIFAR-shaped synthetic data set (``npz:``; 2,000 training and 1,000 test
images, 32x32x3, uniform noise with random labels) and a randomly initialised checkpoint (a plain
state dict, ``--arch``), then runs ``bench.pipeline.runner.run`` once per suite into its own output
folder with a fresh reference-statistics cache (the FID reference is computed, as on a first run).

Seconds: each group's ``compute`` call, the device synchronised before and after (the runner's
``seconds`` of the group's metrics in results.json measure the same call).  FLOPs: counted, not
quoted, by ``torch.utils.flop_counter.FlopCounterMode`` around that call: every convolution and
matmul the group dispatched, forward, input gradients, double backward (Fisher) and the Inception
features (generative) included.  The counter costs a little Python per operation, inside the timed
call: the achieved TFLOP/s are a lower bound, most visibly for launch-bound loops on a few points
(AutoAttack's Square on the points still robust).

The bound: the runs are float32 (no ``--amp``); PyTorch lets cuDNN run float32 convolutions on
TF32 tensor cores by default (``torch.backends.cudnn.allow_tf32``), and WRN-28-10's and
InceptionV3's work is almost all convolutions, so the bound that applies is the dense TF32 peak
(H100 SXM: 494.7 TFLOP/s).  The table also gives the fraction of the plain float32 (CUDA core)
peak, 66.9 TFLOP/s, the bound if TF32 were off; bf16's 989.4 TFLOP/s applies only to
``--amp bf16`` passes, which this check does not turn on.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SUITES = ("robust", "calibration", "generative", "score", "memorization", "landscape", "denoise", "ood")
# dense peaks in TFLOP/s (NVIDIA data sheets, SXM): float32 on CUDA cores, TF32 and bf16 tensor cores
PEAKS = {"H100": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4}, "H200": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4}}

# reduced paper scale (the paper: 10,000 test points, AutoAttack on all of them, 10,000 generated
# images, 500 Fisher points): a tenth of the evaluation points and of the generated images
PAPER_REDUCED = dict(data=(2000, 1000), arch="wrn-28-10", settings={
    "n_eval": 1000, "n_aa": 100, "n_gen": 1000, "n_ref": 2000, "n_score": 100, "probes": 16,
    "landscape_images": 4, "landscape_resolution": 41, "denoise_images": 200,
    # the OOD groups attack every OOD set under every score (pxgrad: through a gradient norm): on
    # --tiny ood_adv does 32x pgd20's FLOPs, so 500 points a set keep it near two minutes
    "n_ood": 500,
})
TINY = dict(data=(40, 20), arch="wrn-10-1", settings={
    "n_eval": 8, "n_aa": 2, "batch_size": 8, "n_gen": 10, "gen_steps": 2, "n_ref": 10, "n_score": 2,
    "probes": 2, "landscape_images": 1, "landscape_resolution": 3, "denoise_images": 2, "denoise_steps": [1, 2],
    "ssim_k": 2, "ssim_n_show": 2, "ood": "uniform",
})


def write_data(path: Path, n_train: int, n_test: int, seed: int = 0) -> str:
    """A CIFAR-shaped synthetic data set (uint8 HWC, 10 classes); returns its ``npz:`` spec."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        arrays[f"x_{split}"] = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        arrays[f"y_{split}"] = np.arange(n) % 10
    np.savez(path, **arrays)
    return f"npz:{path}"


def write_model(path: Path, arch: str, seed: int = 0) -> Path:
    """A randomly initialised ``arch`` for 10 classes of 3-channel images, as a plain state dict."""
    from bench.inputs import nets

    torch.manual_seed(seed)
    torch.save(nets.build(arch, 10, 3).state_dict(), path)
    return path


@contextlib.contextmanager
def timed_groups(device: torch.device, rows: list):
    """While open, every group the runner computes is timed and its FLOPs counted (a row each)."""
    from torch.utils.flop_counter import FlopCounterMode

    from bench.pipeline import compute

    plain = compute.compute

    def counted(g, ctx):
        sync(device)
        t0 = time.perf_counter()
        with FlopCounterMode(display=False) as counter:
            out = plain(g, ctx)
        sync(device)
        rows.append({"suite": g.suite, "group": g.name, "seconds": time.perf_counter() - t0,
                     "flops": float(counter.get_total_flops())})
        return out

    compute.compute = counted
    try:
        yield
    finally:
        compute.compute = plain


@contextlib.contextmanager
def environ(**values):
    """The environment variables set while open, as they were afterwards."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_suites(work: Path, scale: dict, suites, device: torch.device, log=print) -> tuple[list, dict]:
    """Each suite once through the runner: (one row per group, suite -> wall seconds of its run)."""
    from bench.pipeline import runner

    spec = write_data(work / "cifar-shaped.npz", *scale["data"])
    model = write_model(work / "model.pt", scale["arch"])
    settings = dict(scale["settings"], normalize="cifar10")
    rows, walls = [], {}
    # a fresh reference cache: the FID reference is computed, as on a first run
    with timed_groups(device, rows), environ(JEAT_BENCH_CACHE=str(work / "cache")):
        for s in suites:
            t0 = time.perf_counter()
            runner.run(str(model), s, work / s, dataset=spec, arch=scale["arch"], device=device.type,
                       settings=settings, resume=False, log=lambda m: None)
            walls[s] = time.perf_counter() - t0
            log(f"{s}: {walls[s]:.1f} s", flush=True)
    return rows, walls


def table(rows: list, walls: dict, head: str, peaks: dict | None) -> str:
    lines = [head, "", "| suite | group | seconds | GFLOP | TFLOP/s | % of TF32 bound | % of fp32 bound |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        tflops = r["flops"] / 1e12 / r["seconds"] if r["seconds"] > 0 else 0.0
        frac = [f"{100 * tflops / peaks[k]:.2f}" if peaks else "-" for k in ("tf32", "fp32")]
        lines.append(f"| {r['suite']} | {r['group']} | {r['seconds']:.2f} | {r['flops'] / 1e9:,.1f} | "
                     f"{tflops:.4g} | {frac[0]} | {frac[1]} |")
    total = sum(walls.values())
    lines += ["", "Suite wall times (the groups plus the runner's own work: data, model, tables, report): "
              + ", ".join(f"{s} {t:.1f} s" for s, t in walls.items()) + f"; total {total:.1f} s."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run: WRN-10-1, a few points, 2 SGLD steps")
    ap.add_argument("--device", default=None, help="default: cuda, cpu with --tiny")
    ap.add_argument("--suites", default=",".join(SUITES), help="comma list (default: all eight)")
    ap.add_argument("--out", default=None, help="also write the table to this Markdown file")
    a = ap.parse_args(argv)
    device = torch.device(a.device or ("cpu" if a.tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device (use --tiny for the CPU smoke run)", file=sys.stderr)
        return 2
    scale = TINY if a.tiny else PAPER_REDUCED
    suites = [s.strip() for s in a.suites.split(",") if s.strip()]
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        print(f"error: unknown suite {unknown[0]!r}; choose from {', '.join(SUITES)}", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peaks = next((p for k, p in PEAKS.items() if k in name), None)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        rows, walls = run_suites(Path(d), scale, suites, device)
        total = time.perf_counter() - t0
    n_train, n_test = scale["data"]
    head = (f"{scale['arch']} (random weights) on {name}, {n_train:,} train / {n_test:,} test CIFAR-shaped images, "
            f"settings {scale['settings']}; torch {torch.__version__}, cudnn.allow_tf32="
            f"{torch.backends.cudnn.allow_tf32}; whole check {total:.0f} s")
    text = table(rows, walls, head, peaks)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
