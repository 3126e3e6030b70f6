"""Fast paths against the plain path, same model, data and run: throughput of gradient-free
forward passes and of PGD-20, for each of channels_last, bf16 autocast and torch.compile (and all
three), as the ratio fast / plain, with the largest logit change and the share of PGD examples
that differ (bf16 never touches an attack gradient: PGD must match the plain path exactly under
bf16 alone).  Whether a fast path moves any *metric* beyond its tolerance is checked end to end by
tests/test_fastpath.py (``bench check`` of a fast run against a plain one).

    python benchmarks/bench_fastpaths.py [--device cpu|cuda] [--arch wrn-16-4] [--batch-size 128]

These paths are built for GPUs (tensor cores, cuDNN NHWC kernels, fused kernels); on a CPU they
may well be slower, and the table says so rather than hiding it.  Returns the ratio of the
best fast path for PGD-20.
"""

from __future__ import annotations

import argparse
import copy

import torch
from timing import alternate

PATHS = {
    "channels_last": {"channels_last": True},
    "bf16": {"amp": "bf16"},
    "compile": {"compile": True},
    "all three": {"channels_last": True, "amp": "bf16", "compile": True},
}


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arch", default="wrn-16-4")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset of " + ", ".join(PATHS))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from bench.core.energy import EnergyModel
    from bench.engines.attacks import pgd
    from bench.inputs import nets
    from bench.runtime import fastpath

    device = torch.device(a.device)
    torch.manual_seed(0)
    model = EnergyModel(nets.build(a.arch, 10, 3), 0.5, 0.25, (3, 32, 32), 10).to(device).eval().requires_grad_(False)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(a.batch_size, 3, 32, 32, generator=g, device=device)
    y = torch.randint(0, 10, (a.batch_size,), generator=g, device=device)
    start = (x + (torch.rand(x.shape, generator=g, device=device) * 2 - 1) * 8 / 255).clamp(0, 1)

    def forward(m):
        with torch.no_grad():
            return m.logits(x)

    def attack(m):
        return pgd(m, x, y, 8 / 255, steps=20, x_start=start)

    ref_logits, ref_adv = forward(model), attack(model)
    best = 0.0
    print(f"{a.arch}, batch {a.batch_size}, {device}")
    print("| fast path | forward fast/plain | PGD-20 fast/plain | max logit change | PGD pixels differing |")
    print("| --- | --- | --- | --- | --- |")
    for name in a.paths.split(","):
        fast_model = fastpath.apply(copy.deepcopy(model), fastpath.FastPath.from_settings(PATHS[name]))
        ratio = {}
        for op, fn in (("forward", forward), ("pgd", attack)):
            fn(fast_model)  # warm-up (compilation)
            t_fast, t_plain, _, _ = alternate(lambda fn=fn, m=fast_model: fn(m), lambda fn=fn: fn(model), a.repeats, device)
            ratio[op] = t_plain / t_fast
        dl = (forward(fast_model) - ref_logits).abs().max().item()
        diff = (attack(fast_model) != ref_adv).float().mean().item()
        best = max(best, ratio["pgd"])
        print(f"| {name} | {ratio['forward']:.2f}x | {ratio['pgd']:.2f}x | {dl:.2e} | {100 * diff:.3f} % |", flush=True)
    return best


if __name__ == "__main__":
    main()
