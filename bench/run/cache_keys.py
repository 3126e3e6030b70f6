"""What a metric group's cached results are keyed by: the group, the model, the data set, exactly
the settings the group declares (and the fast paths, which may move any number), and the identity
of what it evaluates: the weights digest, the digests of both splits, the digest of the group's
code (its module and every bench module it imports) and the library versions.  ``read_cache``
trusts a cached file only if it parses and holds exactly the group's metrics."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from bench import __version__
from bench.core.code_digest import code_sha256  # noqa: F401  (re-exported)
from bench.core.results import Result
from bench.metrics import Group


def cache_key(group: Group, model_id: str, dataset: str, settings: dict, identity: dict | None = None) -> str:
    """The cache key of one group: its name, the model, the data set and its settings, and the
    ``identity`` of what it evaluates: the weights digest, the digests of both splits, the group's
    code digest and the library versions (see ``run``)."""
    names = group.keyed_settings
    keyed = {"group": group.name, "model": model_id, "dataset": dataset, "bench": __version__,
             "settings": {k: settings.get(k) for k in names}, "identity": identity}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _digest(metrics: dict) -> str:
    return hashlib.sha256(json.dumps(metrics, sort_keys=True).encode()).hexdigest()


def write_cache(path: Path, g: Group, key: str, computed: dict[str, Result], computed_on: dict) -> None:
    """One group's cache entry: its key, its metrics, a digest of them (an entry edited by hand is
    recomputed, never served) and the platform the numbers were computed on."""
    from bench.core.results import finite, write_json

    metrics = finite({k: v.to_json() for k, v in computed.items()})  # as the JSON will hold them
    write_json(path, {"key": key, "group": g.name, "metrics": metrics, "digest": _digest(metrics),
                      "platform": computed_on})


def read_cache(path: Path, g: Group, key: str | None = None) -> tuple[dict[str, Result], dict | None] | None:
    """(metrics, the platform they were computed on) of a cache entry that can be trusted, else
    None (the group is recomputed): the file parses, names this key and group, holds exactly the
    group's metrics, matches its digest (no hand edit), and every value is of its type and within
    its metric's declared bounds."""
    from bench.metrics.registry import spec

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
