"""Paper scale: the throughput of every suite's core computation for WRN-28-10 on CIFAR-10-shaped
data (random weights, synthetic images: timing only), against the FLOP-count bound.

For each suite it times the operation that dominates it, in images (or points) per second, and
projects the wall time at the paper's sizes (10,000 test points, 10,000 generated images, 500
Fisher points).  FLOPs per image are counted, not quoted: ``torch.utils.flop_counter`` runs the
same operation once on a small batch (convolutions and matmuls, the bulk of the work).  The
bound is images/s = peak FLOP/s / FLOPs per image; ``--peak-tflops`` gives the peak (the table
below knows H100 and H200), and the table prints the achieved fraction of it.

    python benchmarks/bench_paper_scale.py --device cuda [--fast]   # the paper-scale timing
    python benchmarks/bench_paper_scale.py --device cpu --small       # a smoke run of the same code

``--fast`` turns on the fast paths (channels_last, bf16 autocast for gradient-free passes,
torch.compile) for the classifier passes, as ``bench run --channels-last --amp bf16 --compile``.
The result table goes to stdout and, with ``--out``, to a Markdown file.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from timing import sync

# dense peak TFLOP/s by device name fragment: (tf32 tensor core, bf16 tensor core), NVIDIA data sheets
PEAKS = {"H100": (494.7, 989.4), "H200": (494.7, 989.4), "A100": (156.0, 312.0)}
PAPER = {"n_eval": 10000, "n_gen": 10000, "n_score": 500, "probes": 16}


def flops_of(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def time_op(fn, device, repeats: int) -> float:
    fn()  # warm-up (cuDNN autotuning, compilation)
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def build(arch: str, device, fast: bool):
    from bench.core.energy import EnergyModel
    from bench.inputs import nets
    from bench.runtime import fastpath

    torch.manual_seed(0)
    net = nets.build(arch, 10, 3)
    model = EnergyModel(net, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616), (3, 32, 32), 10)
    model = model.to(device).eval().requires_grad_(False)
    if fast:
        fastpath.apply(model, fastpath.FastPath(channels_last=True, amp="bf16", compile=True))
    return model


def operations(model, device, batch: int, small: bool):
    """name -> (suite, callable on a batch, images per call, paper-size count, what it is)."""
    from bench.engines.attacks import fgsm, pgd
    from bench.engines.fisher_terms import fisher_terms, rademacher
    from bench.engines.sampling import SGLDConfig, sgld
    from bench.engines.ssim import nearest_neighbours

    g = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, generator=g, device=device)
    y = torch.randint(0, 10, (batch,), generator=g, device=device)
    eps = 8 / 255
    sgld_steps = 5 if small else 100
    probes = 2 if small else PAPER["probes"]
    fb = max(1, batch // 8)  # Fisher: points per pass (x probes images)
    n_train = 500 if small else 50000
    train = torch.rand(n_train, 3, 32, 32, generator=g, device=device)

    def forward():
        with torch.no_grad():
            model.logits(x)

    def pgd20():
        pgd(model, x, y, eps, steps=20, generator=g)

    def ece_fgsm():
        adv = fgsm(model, x, y, eps)
        with torch.no_grad():
            model.logits(adv)

    def sgld_gen():
        sgld(model, x, y, SGLDConfig(steps=sgld_steps), g)

    vs = rademacher((fb, probes, 3, 32, 32), g, device)

    def fisher():
        with model.plain():
            fisher_terms(model, x[:fb], y[:fb], vs)

    def ssim_nn():
        nearest_neighbours(x[:8], train, k=1)

    return {
        "clean forward": ("robust, calibration, landscape", forward, batch, PAPER["n_eval"], "1 forward"),
        "PGD-20": ("robust", pgd20, batch, PAPER["n_eval"], "21 fwd + 20 bwd per image"),
        "FGSM + forward": ("calibration", ece_fgsm, batch, PAPER["n_eval"], "2 fwd + 1 bwd"),
        f"SGLD {sgld_steps} steps": ("generative, memorization", sgld_gen, batch, PAPER["n_gen"],
                                     f"{sgld_steps} fwd + bwd per image"),
        f"Fisher, {probes} probes": ("score", fisher, fb, PAPER["n_score"], "gradients + Taylor-mode traces"),
        "SSIM nearest neighbour": ("memorization", ssim_nn, 8, PAPER["n_gen"], f"1 query vs {n_train} images"),
    }


def inception_op(device, batch: int):
    from bench.engines.features import feature_extractor, resolve_extractor

    ext = resolve_extractor("fid-helper")
    fe = feature_extractor(ext, device)
    u8 = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=device)

    def feats():
        with torch.no_grad():
            fe(u8)

    return feats, u8


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--arch", default="wrn-28-10")
    ap.add_argument("--batch-size", type=int, default=None, help="default 256 on GPU, 8 with --small")
    ap.add_argument("--small", action="store_true", help="smoke run: WRN-16-2, small batches, few steps")
    ap.add_argument("--fast", action="store_true", help="channels_last + bf16 autocast + torch.compile")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak of the precision used (default: known GPUs)")
    ap.add_argument("--out", default=None, help="also write the table to this Markdown file")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    arch = "wrn-16-2" if a.small and a.arch == "wrn-28-10" else a.arch
    batch = a.batch_size or (8 if a.small else 256)
    model = build(arch, device, a.fast)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = a.peak_tflops
    if peak is None:
        peak = next((p[1 if a.fast else 0] for k, p in PEAKS.items() if k in name), None)

    rows = []
    for op, (suite, fn, n_img, paper_n, what) in operations(model, device, batch, a.small).items():
        with model.plain():  # count the plain network's FLOPs (the counter does not see compiled code)
            fl = flops_of(fn) / n_img
        t = time_op(fn, device, a.repeats)
        rows.append((op, suite, what, n_img / t, fl, paper_n))
    feats, u8 = inception_op(device, batch)
    fl = flops_of(feats) / len(u8)
    t = time_op(feats, device, a.repeats)
    rows.append(("Inception features", "generative (IS/FID)", "resize to 299 + InceptionV3", len(u8) / t, fl,
                 PAPER["n_gen"] + 50000))

    head = (f"{arch} on {name}, batch {batch}, fast paths {'on' if a.fast else 'off'}, "
            f"peak {peak if peak else 'unknown'} TFLOP/s, torch {torch.__version__}")
    lines = [head, "", "| operation | suite | per image | images/s | GFLOP/image | TFLOP/s | % of peak | "
             "bound images/s | paper-size time |", "|" + " --- |" * 9]
    for op, suite, what, ips, fl, paper_n in rows:
        tflops = ips * fl / 1e12
        frac = f"{100 * tflops / peak:.1f}" if peak else "-"
        bound = f"{peak * 1e12 / fl:,.0f}" if peak and fl else "-"
        lines.append(f"| {op} | {suite} | {what} | {ips:,.1f} | {fl / 1e9:.2f} | {tflops:.3f} | {frac} | {bound} | "
                     f"{paper_n / ips:,.0f} s ({paper_n} images) |")
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return rows[0][3]


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
