"""The declarations of the package's own metric groups, written down (``catalog.json``) so that
``bench check`` and ``bench table`` read metric facts without importing the groups' code (torch).

``catalog.json`` records, per metric module of ``bench.metrics``, its groups as declared (name,
suite, metrics and their facts, settings, needs) and the sha256 of the sources the declarations
come from: the module itself and the torch-free modules whose constants they use
(``DECLARATION_SOURCES``).  ``groups()`` serves a module's groups from the file only while every
digest matches the sources on disk; otherwise the registry imports the module, which is the truth
(``bench.metrics.registry.declared_groups``).  The file also holds its own digest (``sha256``, of
its modules): a file edited by hand (a tolerance loosened in an installed copy) or malformed (``[]``)
is ignored as if absent, after one warning line, and the modules are imported instead.  A metric module outside the catalogue (an entry
point, a module added to the package) is imported too.  ``tests/test_layers.py`` checks the file
equals the live registry; after changing a declaration, write it again:

    python tools/make_catalog.py
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from bench.core.metric_facts import Metric, Portable, Tolerance

PATH = Path(__file__).with_name("catalog.json")
ROOT = Path(__file__).parents[1]
# the torch-free modules whose constants a declaration may use (settings tuples, fact constructors)
DECLARATION_SOURCES = ("core/metric_facts.py", "core/settings.py", "core/choices.py", "metrics/registry.py")


@functools.cache  # per process: the sources do not change under a running bench
def source_digest(module: str) -> str | None:
    """sha256 over a metric module's source and ``DECLARATION_SOURCES`` (None: not a package file)."""
    if not module.startswith("bench.metrics."):
        return None
    path = ROOT / "metrics" / (module.rsplit(".", 1)[1] + ".py")
    if not path.is_file():
        return None
    h = hashlib.sha256()
    for p in (path, *(ROOT / s for s in DECLARATION_SOURCES)):
        h.update(p.read_bytes())
    return h.hexdigest()


def _metric(d: dict) -> Metric:
    d = dict(d)
    d["tolerance"] = Tolerance(**d["tolerance"])
    d["portable"] = Portable(**d["portable"]) if d["portable"] is not None else None
    d["bounds"] = tuple(d["bounds"])
    return Metric(**d)


def entry(g) -> dict:
    """One group's declaration as plain data."""
    return {"name": g.name, "suite": g.suite, "metrics": list(g.metrics), "settings": list(g.settings),
            "sharded": g.sharded, "needs": list(g.needs), "patterns": g.names is not None,
            "specs": [asdict(sp) for sp in g.specs]}


def build(groups: dict, modules: list[str]) -> dict:
    """The catalogue of registered ``groups`` (``bench.metrics.registry.load_all()``) of ``modules``:
    ``{"modules": {module: {"sha256": its sources' digest, "groups": [entry, ...]}}, "sha256": ...}``,
    the last the file's own digest (``own_digest`` of its modules)."""
    out = {}
    for m in modules:
        digest = source_digest(m)
        if digest is not None:
            out[m] = {"sha256": digest, "groups": [entry(g) for g in groups.values() if g.module == m]}
    return {"modules": out, "sha256": own_digest(out)}


def own_digest(modules: dict) -> str:
    """sha256 of the catalogue's modules as JSON (keys sorted): an edited file no longer matches it."""
    return hashlib.sha256(json.dumps(modules, sort_keys=True).encode()).hexdigest()


def held(module: str) -> list[dict] | None:
    """The declared groups of ``module`` (each a dict of ``entry``'s fields, ``specs`` as
    ``Metric``), or None where the catalogue does not hold the module as it is on disk."""
    found = _load().get(module)
    if found is None or found["sha256"] != source_digest(module):
        return None
    return found["groups"]


@functools.lru_cache(maxsize=1)
def _load() -> dict:
    """The catalogue's modules, their specs as ``Metric``; {} where the file is absent, or (after a
    warning line, once) where it is no catalogue or does not match its own digest: the registry
    then imports the metric modules, whose declarations are the truth."""
    try:
        doc = json.loads(PATH.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        return _ignored(f"not readable as JSON ({type(e).__name__})")
    if not isinstance(doc, dict) or not isinstance(doc.get("modules"), dict):
        kind = {dict: "object", list: "array", str: "string"}.get(type(doc), type(doc).__name__)
        return _ignored(f"not a catalogue (a JSON {kind} without its modules)")
    if doc.get("sha256") != own_digest(doc["modules"]):
        return _ignored("it does not match its own digest: edited by hand? Write it again with "
                        "`python tools/make_catalog.py`" if "sha256" in doc else "it records no digest of its own")
    try:
        return {m: {"sha256": str(e["sha256"]),
                    "groups": [{**g, "specs": tuple(_metric(d) for d in g["specs"])} for g in e["groups"]]}
                for m, e in doc["modules"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        return _ignored(f"malformed ({type(e).__name__})")


def _ignored(why: str) -> dict:
    from bench.core import progress

    progress.say(f"warning: the metric catalogue {PATH} is ignored: {why}; the metric modules are imported "
                 "for their facts instead")
    return {}


def write(groups: dict, modules: list[str]) -> Path:
    PATH.write_text(json.dumps(build(groups, modules), indent=1, sort_keys=True) + "\n")
    _load.cache_clear()
    return PATH
