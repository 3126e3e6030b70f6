"""PGD-20 throughput: bench.engines.attacks.pgd against torchattacks.PGD, same model, data and run.

Both attacks run the same L-inf PGD (eps, step eps/4, 20 steps, random start) on the same images;
runs alternate (ours, theirs, ours, ...) after a warm-up, and the median time per arm is
reported as images per second and as the ratio ours / theirs (target >= 1.0).  Before timing,
both are run from the same start and must give identical adversarial examples.

    python benchmarks/bench_pgd.py [--device cpu|cuda] [--n 450] [--batch-size 450] [--arch digits-cnn]
                                   [--width 32] [--steps 20] [--eps 0.1] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse

import torch
from timing import alternate


def build(arch: str, width: int, device: torch.device):
    from bench.core.energy import EnergyModel
    from bench.inputs import data, nets

    ds = data.load("digits")
    torch.manual_seed(0)
    kwargs = {"width": width} if arch == "digits-cnn" else {}
    net = nets.build(arch, ds.num_classes, ds.input_shape[0], **kwargs)
    model = EnergyModel(net, 0.5, 0.5, ds.input_shape, ds.num_classes).to(device).eval().requires_grad_(False)
    return model, ds




def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=450, help="images (the digits test split, repeated if larger)")
    ap.add_argument("--batch-size", type=int, default=450)
    ap.add_argument("--arch", default="digits-cnn")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import torchattacks

    from bench.engines.attacks import pgd

    device = torch.device(args.device)
    model, ds = build(args.arch, args.width, device)
    reps = -(-args.n // len(ds.test))
    x = ds.test.x.repeat(reps, 1, 1, 1)[: args.n].to(device)
    y = ds.test.y.repeat(reps)[: args.n].to(device)
    eps, alpha, bs = args.eps, args.eps / 4, args.batch_size
    theirs_attack = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=args.steps, random_start=True)
    gen = torch.Generator(device=device).manual_seed(0)

    def ours():
        for i in range(0, len(x), bs):
            pgd(model, x[i:i + bs], y[i:i + bs], eps, args.steps, alpha, "ce", True, gen)

    def theirs():
        for i in range(0, len(x), bs):
            theirs_attack(x[i:i + bs], y[i:i + bs])

    # same start -> same adversarial examples (checked before timing anything)
    torch.manual_seed(1)
    ref = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=args.steps, random_start=True)(x[:bs], y[:bs])
    torch.manual_seed(1)
    start = torch.clamp(x[:bs] + torch.empty_like(x[:bs]).uniform_(-eps, eps), 0, 1)
    same = torch.equal(pgd(model, x[:bs], y[:bs], eps, args.steps, alpha, "ce", x_start=start), ref)

    ours(), theirs()  # warm-up
    mo, mt, _, _ = alternate(ours, theirs, args.repeats, device)
    ratio = mt / mo  # throughput ours / theirs
    print(f"device {device}, {args.arch} width {args.width}, {args.n} images, batch {bs}, {args.steps} steps, "
          f"eps {eps}, {args.repeats} alternating repeats, {torch.get_num_threads()} threads")
    print(f"identical adversarial examples from the same start: {same}")
    print(f"ours (bench.engines.attacks.pgd):   {mo:.3f} s median  {args.n / mo:9.1f} img/s")
    print(f"torchattacks.PGD {torchattacks.__version__}:     {mt:.3f} s median  {args.n / mt:9.1f} img/s")
    print(f"ratio ours/theirs throughput: {ratio:.3f}x (target >= 1.0)")
    return ratio


if __name__ == "__main__":
    main()
