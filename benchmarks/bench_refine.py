"""Memory and time of the full gradient through K refinement steps (bench.engines.defense, checkpointed).

One forward and backward of the cross-entropy through ``RefinedModel`` (backward ``full``) on a
batch, for K = 1 and K = 10, each in a fresh subprocess: the peak memory above the process's own
baseline (CPU: the peak resident set, ``ru_maxrss``, after the pass against before it, no warm-up
in the process, so both K pay the same one-time costs; CUDA: ``max_memory_allocated`` after a
warm-up) and the
time per point.  Target: K = 10 at most 2x the memory of K = 1 (the checkpoints keep only the K
states; each step is recomputed in the backward pass, so time grows about linearly in K).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/bench_refine.py [--device cpu|cuda] [--batch 256]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

CASES = (("digits-cnn", (1, 8, 8)), ("wrn-16-2", (3, 32, 32)))


def one(arch: str, shape: tuple, k: int, batch: int, device: str) -> dict:
    from bench.core.energy import EnergyModel
    from bench.engines.defense import RefineConfig, RefinedModel
    from bench.inputs import nets

    torch.manual_seed(0)
    dev = torch.device(device)
    base = EnergyModel(nets.build(arch, 10, shape[0]), 0.5, 0.5, shape, 10).to(dev).eval()
    x = torch.rand(batch, *shape, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)

    def run(steps):
        m = RefinedModel(base, RefineConfig(steps=steps), torch.Generator(device=dev).manual_seed(0))
        xa = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(m.logits(xa), y), xa)

    if dev.type == "cuda":
        run(1)  # warm-up: kernels
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    run(k)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    seconds = time.perf_counter() - t0
    return {"arch": arch, "K": k, "batch": batch, "peak_bytes": int(peak), "seconds": seconds,
            "ms_per_point": 1000 * seconds / batch}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--one", nargs=3, metavar=("ARCH", "K", "SHAPE"))
    a = ap.parse_args()
    if a.one:
        shape = tuple(int(v) for v in a.one[2].split("x"))
        print(json.dumps(one(a.one[0], shape, int(a.one[1]), a.batch, a.device)))
        return
    for arch, shape in CASES:
        got = {}
        for k in (1, 10):
            cmd = [sys.executable, __file__, "--device", a.device, "--batch", str(a.batch), "--one", arch, str(k),
                   "x".join(map(str, shape))]
            got[k] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        ratio = got[10]["peak_bytes"] / max(1, got[1]["peak_bytes"])
        print(f"{arch} batch {a.batch}: K=1 {got[1]['peak_bytes'] / 2**20:.1f} MiB {got[1]['ms_per_point']:.2f} ms/pt; "
              f"K=10 {got[10]['peak_bytes'] / 2**20:.1f} MiB {got[10]['ms_per_point']:.2f} ms/pt; "
              f"memory ratio {ratio:.2f}x (target <= 2x) {'ok' if ratio <= 2 else 'OVER'}")


if __name__ == "__main__":
    main()
