"""The model zoo: recipes and released checkpoints shipped in ``models/`` (packaged as
``bench._models`` so they are found after a plain ``pip install .``)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from bench.core.errors import BenchError

DEFAULT_METHOD = "jeat"
DEFAULT_DATASET = "digits"
ZOOS = {"digits": "digits", "fmnist": "fashion-mnist"}  # released-model prefix -> data set
METHODS = ("normal", "noise", "at", "prejeat", "jeat", "jem")


def shipped(package: str, folder: str) -> Path:
    """A data folder shipped in the wheel as ``bench.<package>`` (see pyproject), or the repository's
    own folder when ``bench`` is imported from a source tree that has no such mapping."""
    try:
        return Path(str(resources.files(f"bench.{package}")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / folder


def models_dir() -> Path:
    return shipped("_models", "models")


def results_dir() -> Path:
    return shipped("_results", "results")


def recipes_dir() -> Path:
    return models_dir() / "recipes"


def manifest(zoo: str = DEFAULT_DATASET) -> dict:
    path = models_dir() / zoo / "manifest.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def released_path(method: str = DEFAULT_METHOD, zoo: str = DEFAULT_DATASET) -> Path:
    path = models_dir() / zoo / f"{zoo}-{method}.safetensors"
    if not path.is_file():
        raise BenchError(f"no released {zoo} checkpoint for method {method!r} at {path}")
    return path


def resolve_spec(spec: str) -> str:
    """A released name (``fmnist-jeat``, ``digits-at``, or any other name in a zoo's manifest, such
    as ``fmnist-jeat-lrelu``) -> its file; anything else unchanged. A file of that name in the
    working directory wins."""
    zoo, _, method = spec.partition("-")
    if zoo not in ZOOS or Path(spec).exists():
        return spec
    if method in METHODS:
        return str(released_path(method, zoo))
    listed = manifest(zoo).get("models", {}).get(spec)
    return str(models_dir() / zoo / listed["file"]) if listed else spec


def recipe_names() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.toml"))


def header_metadata(path: Path) -> dict:
    """The ``bench`` metadata of a safetensors file, read from its JSON header alone (no tensor,
    no torch); {} when the file is missing or holds none."""
    import struct

    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            head = json.loads(f.read(size))
        meta = json.loads(head.get("__metadata__", {}).get("bench", "{}"))
    except (OSError, ValueError, struct.error, AttributeError):
        return {}
    return meta if isinstance(meta, dict) else {}


COLUMNS = ("name", "method", "arch", "activation", "train eps", "accuracy", "pgd20", "pgd20 eps", "trained",
           "sha256")


def released_rows(zoo: str) -> list[dict]:
    """One row per released checkpoint of ``zoo`` (``bench models``): its name, method, architecture
    and activation (from the file's metadata; ``default``: the architecture's own), the L-inf eps
    it was trained at (its threat model; '-' for a method without one), clean and PGD-20 test accuracy and the eps of that PGD-20 (the
    manifest's), training seconds and the file's sha256 prefix."""
    rows = []
    for name, e in sorted(manifest(zoo).get("models", {}).items()):
        meta = header_metadata(models_dir() / zoo / e.get("file", f"{name}.safetensors"))
        tm = meta.get("threat_model") or {}
        kwargs = meta.get("arch_kwargs") or {}
        rows.append({"name": name, "method": e.get("method", "?"), "arch": meta.get("arch", "?"),
                     "activation": kwargs.get("act") or e.get("activation") or "default",
                     "train eps": _num(tm.get("eps")) if tm else "-",
                     "accuracy": _num(e.get("clean_test_accuracy"), ".4f"),
                     "pgd20": _num(e.get("pgd20_test_accuracy"), ".4f"), "pgd20 eps": _num(e.get("eps")),
                     "trained": f"{e['training_seconds']:.0f} s" if isinstance(e.get("training_seconds"), int | float)
                     else "?", "sha256": str(e.get("sha256"))[:12]})
    return rows


def _num(v, fmt: str = ".4g") -> str:
    return format(v, fmt) if isinstance(v, int | float) and not isinstance(v, bool) else "?"


def aligned(rows: list[dict]) -> list[str]:
    """A header and the rows, each column as wide as its widest cell."""
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in COLUMNS}
    return ["  ".join(f"{r[c]:<{widths[c]}}" for c in COLUMNS).rstrip() for r in [{c: c for c in COLUMNS}, *rows]]
