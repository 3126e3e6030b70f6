"""SGLD throughput: bench.engines.sampling.sgld against raw forward+backward of the same model and batch.

The peer is the least any Langevin sampler must do per step: a loop of logits -> E(x, y) ->
torch.autograd.grad, with no update, noise or divergence check.  Ours is ``sgld`` as ``generate``
runs it (joint energy, JEM's step 0.5 and noise 0.005 in pixels, clamp, per-block noise generators, the
NaN/inf check).  Throughput is images x steps per second; runs alternate (ours, peer, ours, ...)
after a warm-up and the median time per arm is reported, with the ratio ours / peer (target
>= 0.9x).  Before timing, one noiseless unclamped step of ``sgld`` must equal x - step/2 * the
peer's gradient.

    python benchmarks/bench_sgld.py [--device cpu|cuda] [--repeats 5] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse

import torch
from timing import alternate

# (architecture, input shape, batch, steps): the digits CNN on 8x8 digits, a small WideResNet on 32x32
CASES = (("digits-cnn", (1, 8, 8), 250, 20), ("wrn-16-2", (3, 32, 32), 32, 5))


def build(arch: str, shape: tuple, device: torch.device):
    from bench.core.energy import EnergyModel
    from bench.inputs import nets

    torch.manual_seed(0)
    net = nets.build(arch, 10, shape[0])
    return EnergyModel(net, 0.5, 0.5, shape, 10).to(device).eval()  # parameters keep requires_grad, as loaded




def run_case(arch, shape, n, steps, repeats, device) -> float:
    from bench.engines.sampling import CHAIN_BLOCK, BlockNoise, SGLDConfig, sgld

    model = build(arch, shape, device)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand((n, *shape), generator=g).to(device)
    y = (torch.arange(n) % 10).to(device)
    cfg = SGLDConfig(steps=steps)  # generate's defaults: joint energy, step 0.5, noise 0.005 (pixels), clamp
    n_blocks = -(-n // CHAIN_BLOCK)

    def ours():
        sgld(model, x0, y, cfg, BlockNoise.seeded(range(n_blocks), device))

    def peer():
        x = x0
        for _ in range(steps):
            xr = x.detach().requires_grad_(True)
            e = -model.logits(xr).gather(1, y.view(-1, 1)).squeeze(1)
            (grad,) = torch.autograd.grad(e.sum(), xr)

    # the same gradient: one noiseless, unclamped step is x - step/2 * grad E(x, y)
    x1, _ = sgld(model, x0, y, SGLDConfig(steps=1, step_size=cfg.step_size, noise=0.0, clamp=False))
    xr = x0.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad((-model.logits(xr).gather(1, y.view(-1, 1))).sum(), xr)
    same = torch.allclose(x1, x0 - 0.5 * cfg.step_size * grad, rtol=1e-5, atol=1e-6)

    ours(), peer()  # warm-up
    mo, mp, _, _ = alternate(ours, peer, repeats, device)
    ratio = mp / mo  # throughput ours / peer
    work = n * steps
    print(f"{arch} {'x'.join(map(str, shape))}, batch {n}, {steps} steps; same step as x - a/2 grad: {same}")
    print(f"  ours (bench.engines.sampling.sgld):      {mo:.3f} s median  {work / mo:10.1f} images*steps/s")
    print(f"  peer (logits -> E -> autograd):  {mp:.3f} s median  {work / mp:10.1f} images*steps/s")
    print(f"  ratio ours/peer throughput: {ratio:.3f}x (target >= 0.9)")
    return ratio


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="fewer steps and repeats (a smoke run)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    repeats = 3 if args.quick else args.repeats
    print(f"device {device}, {torch.get_num_threads()} threads, {repeats} alternating repeats, torch {torch.__version__}")
    ratios = []
    for arch, shape, n, steps in CASES:
        steps = max(2, steps // 4) if args.quick else steps
        ratios.append(run_case(arch, shape, n, steps, repeats, device))
    worst = min(ratios)
    print(f"ratio ours/peer throughput: {' / '.join(f'{r:.3f}x' for r in ratios)} "
          f"({', '.join(c[0] for c in CASES)}); worst {worst:.3f}x (target >= 0.9)")
    return worst


if __name__ == "__main__":
    main()
