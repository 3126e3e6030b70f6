"""The calibration suite in one run against its four groups run apart: the clean logits and the
FGSM inputs (with their logits) are made once per run (``Context.once``) and shared by ``ece``,
``calibration_extra`` (and its two-fold temperature cross-fit), ``ece_fgsm`` and
``calibration_extra_fgsm``; run apart, as before the sharing, each group makes its own.  The
ratio is the suite's time in one run over its time as four separate runs (the peer), measured
alternately in the same process, and every value is checked equal between the two.

    python benchmarks/bench_calibration_once.py [--arch wrn-16-2] [--n-eval 1000] [--device cpu]

The default is the issue's stand-in for CIFAR-10: a WRN-16-2 (random weights: the cost does not
depend on them) on 32 x 32 x 3 images in [0, 1], 1,000 evaluation points, one thread.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from timing import alternate

GROUPS = ("ece", "ece_fgsm", "calibration_extra", "calibration_extra_fgsm")


def build(arch: str, n: int, seed: int = 0):
    from bench.core.energy import EnergyModel
    from bench.inputs import arrays, nets

    g = torch.Generator().manual_seed(seed)
    shape = (3, 32, 32) if arch.startswith("wrn") else (1, 8, 8)
    torch.manual_seed(seed)
    net = nets.build(arch, 10, shape[0])
    model = EnergyModel(net, 0.5, 0.5, shape, 10).eval()
    x = torch.rand(2 * n, *shape, generator=g)
    y = torch.randint(0, 10, (2 * n,), generator=g)
    data = arrays.dataset(((x[:n], y[:n]), (x[n:], y[n:])))
    return model, data


def suite(model, data, settings: dict, device, out: Path, one_run: bool) -> dict:
    """The four groups on one Context (one run) or each on a fresh one (separate runs): -> {metric: value}."""
    from bench.metrics import Context
    from bench.metrics.registry import load_all
    from bench.pipeline.compute import group_context

    values, ctx = {}, None
    for name in GROUPS:
        if ctx is None or not one_run:
            ctx = Context(model, data, settings, device, out / name)
        g = load_all()[name]
        values.update({k: r.value for k, r in g.fn(group_context(g, ctx)).items()})
    return values


def main(argv=None) -> float:
    from bench.core.settings import DEFAULTS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arch", default="wrn-16-2")
    ap.add_argument("--n-eval", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="digits-cnn on 8 x 8 images, 200 points")
    a = ap.parse_args(argv)
    if a.quick:
        a.arch, a.n_eval = "digits-cnn", 200
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    model, data = build(a.arch, a.n_eval)
    model.to(device)
    s = dict(DEFAULTS, n_eval=a.n_eval, batch_size=a.batch_size, eps=8 / 255, norm="Linf", seed=0)
    with tempfile.TemporaryDirectory() as d:
        out = Path(d)
        shared = suite(model, data, s, device, out / "w1", True)  # warm-up, and the values compared
        apart = suite(model, data, s, device, out / "w2", False)
        t_one, t_apart, _, _ = alternate(lambda: suite(model, data, s, device, out / "one", True),
                                         lambda: suite(model, data, s, device, out / "apart", False),
                                         a.repeats, device)
    differ = [k for k in shared if shared[k] != apart[k]]
    ratio = t_one / t_apart
    print(f"calibration suite ({', '.join(GROUPS)}), {a.arch}, n_eval {a.n_eval}, {a.threads} thread(s), {device}")
    print(f"  one run (shared logits and FGSM inputs): {t_one:.2f} s")
    print(f"  four groups run apart (each its own):    {t_apart:.2f} s")
    print(f"  ratio one run / apart: {ratio:.2f}; {len(shared)} values, "
          + ("all equal" if not differ else f"DIFFERENT: {differ}"))
    if differ:
        raise SystemExit(f"the shared run moved {len(differ)} value(s): {differ}")
    return ratio


if __name__ == "__main__":
    main()
