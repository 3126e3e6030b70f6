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
