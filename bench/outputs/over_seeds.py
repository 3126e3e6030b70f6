"""Runs of one model at several seeds as one row (``bench table --over-seeds``).

Runs that share the checkpoint (sha256), the run's name and every setting but the seed are merged:
each metric held by all of them becomes their mean, with the standard deviation over the seeds
as its std (shown ``mean ± sd`` in the tables), the per-seed values and seeds in its details.
What the seed moves (SGLD chains, attack starts, Hutchinson probes, subsets) is then visible
beside the number; a metric a seed lacks is null with that reason.  One run of a model stays as
it is.
"""

from __future__ import annotations

import json
import statistics

from bench.core.results import Result, Results
from bench.outputs.paper_layout import label

SPREAD = "standard deviation over the seeds"


def _key(r: Results) -> str:
    config = {k: v for k, v in (r.run.get("config") or {}).items() if k != "seed"}
    return json.dumps([r.model.get("sha256"), r.run.get("name"), config], sort_keys=True, default=str)


def _merged_metric(name: str, members: list[Results], seeds: list) -> Result:
    held = [r.metrics.get(name) for r in members]
    if any(m is None or m.value is None for m in held):
        lacking = [s for s, m in zip(seeds, held, strict=True) if m is None or m.value is None]
        reasons = {m.reason for m in held if m is not None and m.value is None}
        why = f": {reasons.pop()}" if len(reasons) == 1 else ""  # the runs' own reason, when they agree
        return Result.missing(f"not held at seed(s) {', '.join(map(str, lacking))} of {len(seeds)}{why}")
    values = [m.value for m in held]
    within = [m.std for m in held if m.std is not None]
    details = {"seeds": seeds, "values": values, "std": SPREAD}
    if within:
        details["std_within_seed"] = statistics.fmean(within)  # the runs' own standard errors, averaged
    return Result(statistics.fmean(values), statistics.stdev(values), held[0].n, details=details)


def over_seeds(runs: list[Results]) -> list[Results]:
    """``runs`` with each set of seeds of one model merged into one Results (module docstring),
    in the order of each set's first run."""
    groups: dict[str, list[Results]] = {}
    for r in runs:
        groups.setdefault(_key(r), []).append(r)
    out = []
    for members in groups.values():
        seeds = [r.run.get("seed") for r in members]
        if len(members) == 1 or len(set(map(str, seeds))) < len(members):  # one run, or a seed twice
            out.extend(members)
            continue
        first = members[0]
        names = list(dict.fromkeys(m for r in members for m in r.metrics))
        run = dict(first.run, seed=None, seeds=seeds, name=f"{label(first)} [seeds {', '.join(map(str, seeds))}]")
        out.append(Results(first.model, run, {m: _merged_metric(m, members, seeds) for m in names}))
    return out
