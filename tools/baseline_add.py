"""``tools/make_baselines.py --add NAME``: a new suite or group merged into existing baselines.

The run of NAME's suite (the case's own arguments and seed) gives the metrics of the groups the
baseline lacks; they join the baseline with what ``bench check`` reads of them: their
``run.groups`` records, with the platform the run was computed on (``check.computed_on``: an
``--exact`` check of them is exact only on that platform), their ``run.code_sha256`` digests and
the settings they declare that the baseline's ``run.config`` predates.  Every key and value the
baseline held stays as it was (``only_added``), and its text too: the new file holds every line of
the old one, in order (a line may gain the comma JSON needs before an addition).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from bench.core.fileio import atomic_write_bytes
from bench.core.results import json_text
from bench.metrics import registry, suites


class AddError(Exception):
    """Why nothing is merged: one line."""


def resolve(name: str) -> tuple[str, list[str]]:
    """(the suite to run, the groups to add) of a suite or group name."""
    known, groups = suites.names(), registry.declared_groups()
    if name in known:
        return name, [g for g, decl in groups.items() if decl.suite == name]
    if name in groups:
        return groups[name].suite, [name]
    raise AddError(f"--add {name}: no suite or group of that name (suites: {', '.join(known)})")


def case_suites(case: dict) -> list[str]:
    return [s.strip() for s in case["suites"].split(",") if s.strip()]


def cases_with(cases: dict, suite: str, asked: list[str]) -> list[str]:
    """The cases (of ``asked``, default all) whose suites include ``suite``, directly or by ``all``."""
    unknown = [c for c in asked if c not in cases]
    if unknown:
        raise AddError(f"unknown case {unknown[0]!r} (cases: {', '.join(cases)})")
    chosen = [c for c in asked or cases if suite in case_suites(cases[c]) or "all" in case_suites(cases[c])]
    if not chosen:
        raise AddError(f"--add: no case {'of ' + ', '.join(asked) + ' ' if asked else ''}runs the suite {suite}")
    return chosen


def _differences(base: dict, new: dict) -> list[str]:
    """What makes the new run another evaluation than the baseline's: model, data, seed, device,
    a library version, or a setting both record."""
    out = []
    pairs = [(f"model.{k}", base["model"].get(k), new["model"].get(k)) for k in ("sha256", "weights_sha256", "dataset")]
    for part in ("data", "versions", "config"):
        b, n = base["run"].get(part) or {}, new["run"].get(part) or {}
        pairs += [(f"run.{part}.{k}", b[k], n[k]) for k in b if k in n]
    pairs += [(f"run.{k}", base["run"].get(k), new["run"].get(k)) for k in ("seed", "device")]
    for where, b, n in pairs:
        if json.dumps(b) != json.dumps(n):
            out.append(f"{where} (baseline {b!r}, now {n!r})")
    return out


def merged(base: dict, new: dict, groups: list[str]) -> tuple[dict, list[str], list[str]]:
    """The baseline with the groups of ``groups`` the new run recorded and the baseline lacks:
    (the document, the metrics added, the config keys added)."""
    diffs = _differences(base, new)
    if diffs:
        raise AddError("not the same evaluation as the baseline, so not merged (remake the baseline): "
                       + "; ".join(diffs))
    doc = copy.deepcopy(base)
    run, now = doc["run"], new["run"]
    declared = registry.declared_groups()
    metrics, keys = [], []
    for g in groups:
        if g not in (now.get("groups") or {}) or g in (run.get("groups") or {}):
            continue  # not run (a group for other settings), or already in the baseline
        record = copy.deepcopy(now["groups"][g])
        for m in record.get("metrics") or ():
            if m in doc["metrics"]:
                raise AddError(f"the baseline already holds {m} (of group {g}) without its group record")
            doc["metrics"][m] = copy.deepcopy(new["metrics"][m])
            metrics.append(m)
        record.setdefault("platform", copy.deepcopy(now.get("platform")))
        run.setdefault("groups", {})[g] = record
        if g in (now.get("code_sha256") or {}):
            run.setdefault("code_sha256", {})[g] = now["code_sha256"][g]
        config = now.get("config") or {}
        for key in declared[g].settings if g in declared else ():
            if key in config and key not in run.setdefault("config", {}):
                run["config"][key] = copy.deepcopy(config[key])
                keys.append(key)
    return doc, metrics, keys


def only_added(old, new, where: str = "") -> None:
    """Assert that ``new`` holds every key of ``old`` with its value (dicts may gain keys after
    their own; anything else is byte-identical as JSON)."""
    if isinstance(old, dict) and isinstance(new, dict):
        assert list(new)[:len(old)] == list(old), f"{where or 'the document'}: keys removed or moved"
        for k, v in old.items():
            only_added(v, new[k], f"{where}.{k}" if where else k)
    else:
        assert json.dumps(old) == json.dumps(new), f"{where}: changed"


def lines_kept(old_text: str, new_text: str) -> bool:
    """Whether every line of ``old_text`` is in ``new_text``, in order (a line may gain a comma)."""
    new_lines = iter(new_text.splitlines())
    return all(any(n in (line, line + ",") for n in new_lines) for line in old_text.splitlines())


def add_case(baseline: Path, run: Path, groups: list[str], target: Path) -> str:
    """Merge ``run``'s results of ``groups`` into ``baseline``, written to ``target``; one line
    saying what was added."""
    text = baseline.read_text()
    base = json.loads(text)
    if json_text(base) != text:
        raise AddError(f"{baseline}: not as bench writes results.json, so a rewrite would move more than additions")
    try:
        doc, metrics, keys = merged(base, json.loads(run.read_text()), groups)
    except AddError as e:
        raise AddError(f"{baseline.name}: {e}") from None
    if not metrics:
        return f"{baseline.name}: nothing to add (its baseline holds every group of {', '.join(groups)} that ran)"
    new_text = json_text(doc)
    only_added(base, json.loads(new_text))
    assert lines_kept(text, new_text), f"{baseline}: a line of the baseline would change"
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, new_text.encode())
    return (f"{baseline.name}: added {len(metrics)} metric(s) ({', '.join(metrics[:4])}{', ...' if len(metrics) > 4 else ''})"
            + (f" and setting(s) {', '.join(keys)}" if keys else "") + f" -> {target}")
