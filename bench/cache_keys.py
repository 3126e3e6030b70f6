"""What a metric group's cached results are keyed by: the group, the model, the data set, exactly
the settings the group declares (and the fast paths, which may move any number), and the identity
of what it evaluates: the weights digest, the digests of both splits, the digest of the group's
code (its module and every bench module it imports) and the library versions.  ``read_cache``
trusts a cached file only if it parses and holds exactly the group's metrics."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
from pathlib import Path

from bench import __version__, fastpath
from bench.metrics import Group
from bench.results import Result


def cache_key(group: Group, model_id: str, dataset: str, settings: dict, identity: dict | None = None) -> str:
    """The cache key of one group: its name, the model, the data set and its settings, and the
    ``identity`` of what it evaluates: the weights digest, the digests of both splits, the group's
    code digest and the library versions (see ``run``)."""
    names = keyed_settings(group)
    keyed = {"group": group.name, "model": model_id, "dataset": dataset, "bench": __version__,
             "settings": {k: settings.get(k) for k in names}, "identity": identity}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:20]


def keyed_settings(group: Group) -> list[str]:
    """The settings that key a group's cache: those it declares and the fast paths (which may move
    any number)."""
    return sorted(set(group.settings) | set(fastpath.SETTINGS))


def code_sha256(module: str, memo: dict | None = None) -> str:
    """sha256 of the source of ``module`` and of every ``bench`` module it imports, directly or
    through others, at top level or inside functions: the code a metric group's numbers come from."""
    memo = {} if memo is None else memo
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name not in memo:
            memo[name] = _module_source(name)
        todo += [m for m in memo[name][1] if m not in seen]
    h = hashlib.sha256()
    for name in sorted(seen):
        h.update(f"{name}|{len(memo[name][0])}|".encode())
        h.update(memo[name][0])
    return h.hexdigest()


def _module_source(name: str) -> tuple[bytes, list[str]]:
    """(source bytes, the bench modules it imports) of a module; no source: (b"", [])."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return b"", []
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return b"", []
    src = Path(spec.origin).read_bytes()
    package = name if spec.submodule_search_locations is not None else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) \
                if node.level else node.module or ""
            found += [base] + [f"{base}.{a.name}" for a in node.names]
    return src, sorted({m for m in found if (m == "bench" or m.startswith("bench.")) and _is_module(m)})


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _digest(metrics: dict) -> str:
    return hashlib.sha256(json.dumps(metrics, sort_keys=True).encode()).hexdigest()


def write_cache(path: Path, g: Group, key: str, computed: dict[str, Result], computed_on: dict) -> None:
    """One group's cache entry: its key, its metrics, a digest of them (an entry edited by hand is
    recomputed, never served) and the platform the numbers were computed on."""
    from bench.results import finite, write_json

    metrics = finite({k: v.to_json() for k, v in computed.items()})  # as the JSON will hold them
    write_json(path, {"key": key, "group": g.name, "metrics": metrics, "digest": _digest(metrics),
                      "platform": computed_on})


def read_cache(path: Path, g: Group, key: str | None = None) -> tuple[dict[str, Result], dict | None] | None:
    """(metrics, the platform they were computed on) of a cache entry that can be trusted, else
    None (the group is recomputed): the file parses, names this key and group, holds exactly the
    group's metrics, matches its digest (no hand edit), and every value is of its type and within
    its metric's declared bounds."""
    from bench.registry import spec

    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
        if key is not None and (d.get("key") != key or d.get("group") != g.name):
            return None
        if d.get("digest") != _digest(d["metrics"]):
            return None
        metrics = {k: Result.from_json(v) for k, v in d["metrics"].items()}
        for name, r in metrics.items():
            if not isinstance(d["metrics"][name].get("n", 0), int) or not spec(name).admits(r.value):
                return None
    except Exception:
        return None  # unreadable cache is recomputed, never trusted
    if set(metrics) != set(g.metrics):
        return None
    on = d.get("platform")
    return metrics, (on if isinstance(on, dict) else None)
