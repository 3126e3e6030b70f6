"""What a metric group's cached results are keyed by: the group, the model, the data set, exactly
the settings the group declares (and the fast paths, which may move any number), and the identity
of what it evaluates: the weights digest, the digests of both splits, the digest of the group's
code (its module and every bench module it imports) and the library versions.  ``read_cache``
trusts a cached file only if its metrics pass ``refusal``, the rule the groups an earlier run in
``--out`` adds are held to as well (``bench.pipeline.kept_groups``)."""

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


def metrics_digest(metrics: dict) -> str:
    """sha256 of a group's metrics as the JSON holds them (a cache entry's, a results.json group's)."""
    return hashlib.sha256(json.dumps(metrics, sort_keys=True).encode()).hexdigest()


def stored(computed: dict[str, Result]) -> dict:
    """A group's metrics as results.json and its cache entry hold them (``metrics_digest`` of this)."""
    from bench.core.results import finite

    return finite({k: v.to_json() for k, v in computed.items()})


def write_cache(path: Path, g: Group, key: str, computed: dict[str, Result], computed_on: dict) -> None:
    """One group's cache entry: its key, its metrics, a digest of them (an entry edited by hand is
    recomputed, never served) and the platform the numbers were computed on."""
    from bench.core.results import write_json

    metrics = stored(computed)  # as the JSON will hold them
    write_json(path, {"key": key, "group": g.name, "metrics": metrics, "digest": metrics_digest(metrics),
                      "platform": computed_on})


def refusal(metrics, digest, g: Group) -> str | None:
    """Why a group's stored metrics (``metrics``: name -> its JSON record, as a cache entry or an
    earlier results.json holds them; ``digest``: the one written with them) cannot be trusted, in
    words; None: they can.  They must match their digest (no hand edit), be exactly the group's
    metrics, and each one of its metric's values (``Metric.refusal``: type, bounds, the per-point
    record).  The rule of the per-group cache and of the groups a run keeps (``kept_groups``)."""
    from bench.metrics.registry import spec

    if not isinstance(metrics, dict):
        return "its metrics are not an object"
    if digest is None:
        return "no digest of its metrics is recorded"
    if digest != metrics_digest(metrics):
        return "its metrics do not match the digest written with them (edited by hand?)"
    if set(metrics) != set(g.metrics):
        return f"it holds the metrics {sorted(metrics)}, the group declares {sorted(g.metrics)}"
    for name, doc in metrics.items():
        why = spec(name).refusal(doc)
        if why is None:
            try:
                Result.from_json(doc)
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                why = f"not a metric record ({type(e).__name__})"
        if why:
            return f"metric {name}: {why}"
    return None


def read_cache(path: Path, g: Group, key: str | None = None) -> tuple[dict[str, Result], dict | None] | None:
    """(metrics, the platform they were computed on) of a cache entry that can be trusted, else
    None (the group is recomputed): the file parses, names this key and group, and its metrics pass
    ``refusal`` (their digest, exactly the group's metrics, each of its type, within its metric's
    declared bounds and agreeing with its per-point record)."""
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # unreadable cache is recomputed, never trusted
    if not isinstance(d, dict) or (key is not None and (d.get("key") != key or d.get("group") != g.name)):
        return None
    if refusal(d.get("metrics"), d.get("digest"), g) is not None:
        return None
    metrics = {k: Result.from_json(v) for k, v in d["metrics"].items()}
    on = d.get("platform")
    return metrics, (on if isinstance(on, dict) else None)
