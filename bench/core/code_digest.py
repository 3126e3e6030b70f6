"""The digest of a module's code and of every bench module it imports: what keys a metric
group's cache entry (``bench.pipeline.cache_keys``) and an attack's share of it (``bench.metrics.curves``)."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from pathlib import Path


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
