"""How far honest reruns on simulated other machines move each metric, in the unit its paired rule
counts (docs/CHECKS.md): points flipped, pairs changed, relative drift.

    python tools/make_baselines.py --out runs/sim-default --env ATEN_CPU_CAPABILITY=default
    python tools/measure_noise.py runs/sim-default runs/sim-avx2 ...

For each simulated machine and case, each metric against results/baseline/<case>.json; then per
metric family the largest noise and the margin its declared rule allows at that n.
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from pathlib import Path

from bench.core import outcomes, results
from bench.metrics import registry
from bench.outputs import check_rules

ROOT = Path(__file__).resolve().parents[1]


def noise(name: str, b: results.Result, c: results.Result) -> tuple[str, float, float]:
    """(unit, noise, allowed) of one metric."""
    rule = registry.spec(name).portable
    if rule is None or b.value is None or c.value is None:
        return "-", float("nan"), float("nan")
    d = abs(c.value - b.value)
    n = int(b.n or 0)
    if rule.unit == "points":
        f = outcomes.flips(outcomes.of(b.details), outcomes.of(c.details))
        return "points", max(f or 0, round(d * n)), math.floor(rule.share * n)
    if rule.unit == "pairs":
        p = check_rules.pair_count(b)
        return "pairs", round(d * p), math.floor(rule.share * p)
    if rule.unit == "absolute":
        return "absolute", d, rule.abs
    f = check_rules.flipped(b, c) or 0
    return ("relative" + (f" ({f} flips)" if f else "")), d / max(abs(b.value), 1e-12), rule.rel


def family(name: str) -> str:
    for prefix in ("ood_adv_", "ood_"):
        if name.startswith(prefix):
            return prefix + name[len(prefix):].split("_")[0]
    return name.removesuffix("_fgsm") + (" (fgsm)" if name.endswith("_fgsm") else "")


def runs(sim: Path):
    """Every run of a regression case below ``sim`` (tools/make_baselines.py --out, or a pytest
    --basetemp of the regression job): folders named by their case holding a results.json."""
    cases = {p.stem for p in (ROOT / "results" / "baseline").glob("*.json")}
    return sorted(p.parent for p in sim.rglob("results.json") if p.parent.name in cases)


def main(dirs: list[str]) -> None:
    worst = defaultdict(lambda: (0.0, "", ""))
    for sim in map(Path, dirs):
        for run in runs(sim):
            base = results.read(ROOT / "results" / "baseline" / f"{run.name}.json")
            cur = results.read(run)
            for name, b in base.metrics.items():
                if name not in cur.metrics:
                    continue
                unit, v, allowed = noise(name, b, cur.metrics[name])
                if v == v and v >= worst[family(name)][0]:
                    worst[family(name)] = (v, f"{unit}, allowed {allowed:g} at n={b.n}", f"{sim.name}/{run.name}")
    print("| metric family | largest deviation | unit and margin there | where |")
    print("| --- | ---: | --- | --- |")
    for k, (v, how, where) in sorted(worst.items()):
        print(f"| {k} | {v:.3g} | {how} | {where} |")


if __name__ == "__main__":
    main(sys.argv[1:])
