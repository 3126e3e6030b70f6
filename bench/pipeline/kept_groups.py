"""Runs that add up: a second ``bench run`` into the same ``--out`` keeps the groups of the earlier
results.json that it does not rerun, so results.json, the tables and report.html hold the union.

A group is kept only when its numbers are those this run would compute: the same weights, the
same images of both splits, the same library versions, the same code digest of the group and the
same values of exactly the settings that key its cache (``Group.keyed_settings``).  Anything
else is refused with one line naming what differs (never a silent drop, never a mixed record); a
group this run reruns is replaced by its new numbers.  A kept group is held to the rules of the
per-group cache (``cache_keys.refusal``: the digest written with its metrics, their types and
bounds, their per-point records): one that fails them is computed again by this run, after a
warning line naming it and why (a value edited by hand is never carried over).  An earlier file that is not a readable
results record (or that records no groups) holds nothing to keep: the run says so and replaces it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from bench.core import results
from bench.core.errors import BenchError
from bench.core.results import Result, Results
from bench.metrics import registry
from bench.pipeline import cache_keys


@dataclass
class Kept:
    """What an earlier run in ``--out`` adds to this one: its metrics, its group records, its suites,
    and the groups this run must compute again (name -> why their stored metrics are not trusted)."""

    metrics: dict[str, Result] = field(default_factory=dict)
    groups: dict[str, dict] = field(default_factory=dict)
    suites: list[str] = field(default_factory=list)
    recompute: dict[str, str] = field(default_factory=dict)


@dataclass
class Earlier:
    """The results record already in ``--out``, and its metrics as the file holds them (what
    ``cache_keys.refusal`` checks against each group's digest)."""

    res: Results
    raw_metrics: dict


def earlier(out: Path, log) -> Earlier | None:
    """The results record already in ``out`` (None: none there, or one that cannot be read, said)."""
    path = Path(out) / "results.json"
    if not path.is_file():
        return None
    try:
        res, raw = results.read_raw(path)
    except BenchError as e:
        log(f"warning: {e}; it is replaced by this run's results")
        return None
    return Earlier(res, raw["metrics"])


def _same(a, b) -> bool:
    norm = lambda v: json.loads(json.dumps(results.finite(v), sort_keys=True, default=str))  # noqa: E731
    return norm(a) == norm(b)


def _short(v) -> str:
    text = json.dumps(results.finite(v), default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def keep(found: Earlier | None, rerun: set[str], now: dict, out: Path, log=lambda m: None) -> Kept:
    """The groups of the earlier record (``found``) that this run does not rerun (``rerun``: its
    group names), checked against ``now`` (``weights_sha256``, ``data`` (train, test digests),
    ``dataset``, ``versions``, ``settings``, ``code``: group name -> code digest of the current
    code); a conflict raises a one-line ``BenchError``.  A group no installed metric module declares
    any more is not kept (said).  A group whose stored metrics fail the rules of the per-group cache
    (``cache_keys.refusal``: their digest, types, bounds, per-point records) is not kept either: it
    goes to ``Kept.recompute``, said in a warning line naming it and why, and this run computes it."""
    kept = Kept()
    if found is None:
        return kept
    prev = found.res
    recorded = prev.run.get("groups")
    if not isinstance(recorded, dict):
        return kept
    todo = {g: rec for g, rec in recorded.items() if g not in rerun and isinstance(rec, dict)}
    groups = registry.load_all()
    for name in [g for g in todo if g not in groups]:
        log(f"warning: --out {out}: the earlier results of group {name} are not kept: "
            "no installed metric module declares it")
        del todo[name]
    if not todo:
        return kept
    where = f"--out {out} holds an earlier run ({', '.join(sorted(todo))})"
    hint = "; use another --out, or rerun its suites in this command"
    if prev.model.get("weights_sha256") != now["weights_sha256"]:
        raise BenchError(f"{where} of another model (weights sha256 "
                         f"{str(prev.model.get('weights_sha256'))[:12]}, now {str(now['weights_sha256'])[:12]}){hint}")
    data = prev.run.get("data") or {}
    if prev.model.get("dataset") != now["dataset"] or \
            [data.get("train_sha256"), data.get("test_sha256")] != list(now["data"]):
        raise BenchError(f"{where} on other data ({prev.model.get('dataset')}, not the images of "
                         f"{now['dataset']} evaluated now){hint}")
    for lib, v in (now["versions"] or {}).items():
        if (prev.run.get("versions") or {}).get(lib) != v:
            raise BenchError(f"{where} made with {lib} {(prev.run.get('versions') or {}).get(lib)}, now {v}{hint}")
    config = prev.run.get("config") or {}
    for name, rec in todo.items():
        g = groups[name]
        for k in g.keyed_settings:
            if k not in config or not _same(config[k], now["settings"].get(k)):
                was = _short(config[k]) if k in config else "not recorded"
                raise BenchError(f"{where}: its group {name} ran with {k}={was}, "
                                 f"this run has {k}={_short(now['settings'].get(k))}{hint}")
        if (prev.run.get("code_sha256") or {}).get(name) != now["code"](g):
            raise BenchError(f"{where}: the code of its group {name} has changed since{hint}")
        why = _untrusted(found, rec, g.for_settings(now["settings"]))
        if why:
            log(f"warning: --out {out}: the earlier results of group {name} are recomputed: {why}")
            kept.recompute[name] = why
            continue
        names = [m for m in rec.get("metrics") or [] if m in prev.metrics]
        kept.metrics.update({m: prev.metrics[m] for m in names})
        own = dict(rec, kept=True)
        if "platform" not in own and prev.run.get("platform") is not None:
            own["platform"] = prev.run["platform"]  # where its numbers were computed (bench check --exact)
        kept.groups[name] = own
        if rec.get("suite") and rec["suite"] not in kept.suites:
            kept.suites.append(rec["suite"])
    return kept


def _untrusted(found: Earlier, rec: dict, g) -> str | None:
    """Why a kept group's stored metrics fail the per-group cache's rules (``cache_keys.refusal``)."""
    names = rec.get("metrics")
    if not isinstance(names, list) or not all(isinstance(m, str) for m in names):
        return "its record does not list its metrics"
    return cache_keys.refusal({m: found.raw_metrics[m] for m in names if m in found.raw_metrics},
                              rec.get("digest"), g)
