"""Plain against refined inference on released models, every adaptive attack on the same points.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/measure_defense.py --n 100 --k 0,5,10 \
        models/digits/digits-jem.safetensors models/digits/digits-jeat.safetensors

K = 0 is plain inference.  The numbers are those of the ``adaptive`` group (bench.metrics.adaptive):
a point is robust when correct clean and under attack in all R draws; ``pgd20`` is the plain attack
evaluated once (as the ``pgd20`` metric does), ``pgd20_R`` the same attack over R draws.  Prints a
Markdown table and the flags each configuration raised (bench.runtime.sanity).

``--json FILE`` also records each point's outcome per attack; ``--compare A.json B.json`` counts the
points whose outcome differs between two such runs, e.g. one made under ``ATEN_CPU_CAPABILITY=default``
(another machine's kernels, docs/CHECKS.md): the flips a paired check of these metrics must allow."""

from __future__ import annotations

import argparse
import json
import time

import torch

from bench.core import settings
from bench.engines.attacks import bpda_eot_pgd, eot_pgd, pgd_restarts
from bench.engines.defense import RefineConfig, RefinedModel
from bench.engines.robust_flags import survives
from bench.inputs import checkpoints, data
from bench.runtime import sanity


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--k", default="0,5,10")
    ap.add_argument("--eot", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-aa", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.compare:
        return compare(*a.compare)
    rows = []
    print("| model | K | clean (R) | PGD-20 | PGD-20 (R) | EOT-PGD | BPDA+EOT | AA rand | worst | s | flags |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for spec in a.models:
        loaded = checkpoints.load(spec)
        ds = data.load(loaded.meta.get("dataset") or "digits")
        eps = settings.dataset_defaults(ds.name)["eps"]
        x, y = ds.test.x[:a.n], ds.test.y[:a.n]
        for k in (int(v) for v in a.k.split(",")):
            t0 = time.time()
            torch.manual_seed(0)
            base = loaded.model.eval()
            model = base if k == 0 else RefinedModel(base, RefineConfig(steps=k), torch.Generator().manual_seed(0))
            row = {"model": spec, "K": k, "n": a.n, "eps": eps, **_evaluate(model, x, y, eps, a)}
            row["seconds"] = round(time.time() - t0, 1)
            rows.append(row)
            cells = [f"{100 * row[m]:.1f}" if row.get(m) is not None else "-" for m in
                     ("clean", "pgd20", "pgd20_R", "eot_pgd", "bpda_eot", "aa_rand", "worst")]
            print(f"| {spec.split('/')[-1]} | {k} | " + " | ".join(cells) + f" | {row['seconds']} | "
                  f"{', '.join(sorted(set(row['flags']))) or 'none'} |", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


def _evaluate(model, x, y, eps, a) -> dict:
    r = a.repeats
    kw = {"steps": 20, "step_size": eps / 4}
    clean = survives(model, x, y, r)
    idx = clean.nonzero().squeeze(1)
    out = {"clean": clean.double().mean().item(), "flags": [], "points": {"clean": _bits(clean)}}

    def robust(attack, repeats):
        adv = x.clone()
        adv[idx] = attack(model, x[idx], y[idx], eps, "Linf", generator=torch.Generator().manual_seed(2))
        sanity.check_in_ball(x, adv, eps, "Linf")
        return clean & survives(model, adv, y, repeats)

    plain = robust(lambda m, xx, yy, e, nm, generator: pgd_restarts(m, xx, yy, e, kw["steps"], kw["step_size"],
                                                                     generator=generator, norm=nm), 1)
    out["pgd20"] = plain.double().mean().item()
    flags = {"pgd20": plain}
    flags["pgd20_R"] = robust(lambda m, xx, yy, e, nm, generator: pgd_restarts(
        m, xx, yy, e, kw["steps"], kw["step_size"], generator=generator, norm=nm), r)
    flags["eot_pgd"] = robust(lambda m, xx, yy, e, nm, generator: eot_pgd(
        m, xx, yy, e, nm, eot=a.eot, generator=generator, **kw), r)
    if isinstance(model, RefinedModel):
        flags["bpda_eot"] = robust(lambda m, xx, yy, e, nm, generator: bpda_eot_pgd(
            m, xx, yy, e, nm, eot=a.eot, generator=generator, **kw), r)
    if not a.no_aa:
        from bench.engines.aa_adapter import run_autoattack

        flags["aa_rand"] = robust(lambda m, xx, yy, e, nm, generator: run_autoattack(
            m, xx, yy, eps=e, norm=nm, version="rand", seed=0, batch_size=len(yy)).x_adv, r)
    worst = clean.clone()
    for name, f in flags.items():
        out[name] = f.double().mean().item()
        out["points"][name] = _bits(f)
        worst &= f
    out["points"]["worst"] = _bits(worst)
    out["worst"] = worst.double().mean().item()
    raised = sanity.collect([sanity.randomness_flag(model, x, None, "pgd20"),
                             sanity.gradient_flag(sanity.masked_share(model, x, y), len(x), "pgd20")])
    out["flags"] = [f["flag"] for f in raised]
    return out


def _bits(robust: torch.Tensor) -> str:
    return "".join("1" if b else "0" for b in robust.tolist())


def compare(path_a: str, path_b: str) -> None:
    """Per model, K and attack: the points whose outcome differs between two --json runs."""
    with open(path_a) as fa, open(path_b) as fb:
        rows_a, rows_b = json.load(fa), json.load(fb)
    print("| model | K | attack | n | flipped | share |")
    print("|---|---:|---|---:|---:|---:|")
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for name, bits in ra["points"].items():
            flips = sum(u != v for u, v in zip(bits, rb["points"][name], strict=True))
            print(f"| {ra['model'].split('/')[-1]} | {ra['K']} | {name} | {len(bits)} | {flips} | "
                  f"{100 * flips / len(bits):.1f}% |")


if __name__ == "__main__":
    main()
