"""The model zoo: recipes and released checkpoints shipped in ``models/`` (packaged as
``bench._models`` so they are found after a plain ``pip install .``)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from bench.errors import BenchError

DEFAULT_METHOD = "jeat"
DEFAULT_DATASET = "digits"


def shipped(package: str, folder: str) -> Path:
    """A data folder shipped in the wheel as ``bench.<package>`` (see pyproject), or the repository's
    own folder when ``bench`` is imported from a source tree that has no such mapping."""
    try:
        return Path(str(resources.files(f"bench.{package}")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1] / folder


def models_dir() -> Path:
    return shipped("_models", "models")


def results_dir() -> Path:
    return shipped("_results", "results")


def recipes_dir() -> Path:
    return models_dir() / "recipes"


def manifest(dataset: str = DEFAULT_DATASET) -> dict:
    path = models_dir() / dataset / "manifest.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def released_path(method: str = DEFAULT_METHOD, dataset: str = DEFAULT_DATASET) -> Path:
    path = models_dir() / dataset / f"{dataset}-{method}.safetensors"
    if not path.is_file():
        raise BenchError(f"no released {dataset} checkpoint for method {method!r} at {path}")
    return path


def recipe_names() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.toml"))
