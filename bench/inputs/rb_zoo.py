"""RobustBench's model zoo (``--model rb:NAME``): robustbench imported through a bridge to
pyautoattack, and its models read from a folder in RobustBench's own layout.

The bridge.  robustbench 1.1.1's ``__init__`` imports ``robustbench/eval.py``, which imports
``autoattack`` (``from autoattack import AutoAttack``, ``from autoattack.state import
EvaluationState``), while the package it depends on, pyautoattack, installs that code as the module
``pyautoattack``; without a module named ``autoattack`` no part of robustbench imports.
``autoattack_bridge`` names pyautoattack's modules ``autoattack`` and ``autoattack.state`` for the
import of robustbench only, and takes the names away after; a real ``autoattack`` (imported, or
installed) is left alone and used.  robustbench also imports ``pkg_resources``, which setuptools
81 removed: the extra pins ``setuptools<81``.

The folder (``--rb-model-dir DIR``, robustbench's ``model_dir``; default ``models``, robustbench's
own ``./models``): ``DIR/<dataset>/Linf/<NAME>.pt`` (an ensemble: ``<NAME>.pt_m0.pt``,
``<NAME>.pt_m1.pt``, ...), where ``<dataset>`` is ``cifar10``, ``cifar100`` or ``imagenet`` by
the data set's number of classes.  robustbench's ``load_model`` reads the file when it is there
(a state dict, or a dict holding it under ``state_dict``; ``module.`` and ``model.`` prefixes are
stripped) and downloads it from Google Drive only when it is missing, so a folder of models a
user already has works with no network.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import sys
import warnings
from pathlib import Path

from bench.core.errors import BenchError, short_reason
from bench.core.fileio import sha256

DEFAULT_DIR = "models"  # robustbench's own default, relative to the working directory
THREAT_MODEL = "Linf"
DATASETS = {10: "cifar10", 100: "cifar100", 1000: "imagenet"}  # by the data set's number of classes
EXTRA = "pip install 'jeat-bench[robustbench]'"
# what robustbench 1.1.1 imports at import time and does not need (its own deprecation noise)
_IMPORT_NOISE = ((UserWarning, "pkg_resources is deprecated"), (FutureWarning, r"`torch\.jit\.interface` is deprecated"))


@contextlib.contextmanager
def autoattack_bridge():
    """While open, ``import autoattack`` and ``import autoattack.state`` give pyautoattack's package
    and its ``state`` module, unless a real ``autoattack`` is imported or installed (then nothing
    changes).  On exit the names it added are removed; whatever imported them keeps its objects."""
    if "autoattack" in sys.modules or importlib.util.find_spec("autoattack") is not None:
        yield
        return
    import pyautoattack
    import pyautoattack.state

    added = {"autoattack": pyautoattack, "autoattack.state": pyautoattack.state}
    sys.modules.update(added)
    try:
        yield
    finally:
        for name, module in added.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]


def robustbench():
    """-> (robustbench's ``load_model``, its zoo ``{BenchmarkDataset: {ThreatModel: {name: entry}}}``,
    ``BenchmarkDataset``, ``ThreatModel``), imported through ``autoattack_bridge``."""
    with autoattack_bridge(), warnings.catch_warnings():
        for category, message in _IMPORT_NOISE:
            warnings.filterwarnings("ignore", message=message, category=category)
        from robustbench.model_zoo import model_dicts
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
        from robustbench.utils import load_model
    return load_model, model_dicts, BenchmarkDataset, ThreatModel


def model_files(name: str, dataset: str, entry: dict, model_dir: str | Path) -> list[Path]:
    """The files robustbench's ``load_model`` reads for the zoo entry ``entry`` of ``name`` (none for
    an entry timm loads)."""
    path = Path(model_dir) / dataset / THREAT_MODEL / f"{name}.pt"
    ids = entry["gdrive_id"]
    if ids is None:
        return []
    return [Path(f"{path}_m{i}.pt") for i in range(len(ids))] if isinstance(ids, list) else [path]


def load_net(name: str, num_classes: int | None, model_dir: str | Path | None = None):
    """-> (the network of RobustBench's entry ``name`` for the data set's number of classes (L-inf
    zoo), the sha256 of its file (None for an ensemble)).  The file is read from ``model_dir`` in
    RobustBench's layout (module docstring) and downloaded there only when it is missing.  Every
    failure is one ``BenchError`` line."""
    try:
        load_model, zoo, BenchmarkDataset, ThreatModel = robustbench()
    except Exception as e:
        raise BenchError(f"rb:{name} needs the robustbench extra ({EXTRA}): {type(e).__name__}: "
                         f"{short_reason(e)}") from None
    dataset = DATASETS.get(num_classes)
    if dataset is None:
        raise BenchError(f"rb:{name}: RobustBench's models have 10 (cifar10), 100 (cifar100) or 1000 (imagenet) "
                         f"classes; the data set has {num_classes}")
    entries = zoo[BenchmarkDataset(dataset)][ThreatModel(THREAT_MODEL)]
    if name not in entries:
        close = difflib.get_close_matches(name, list(entries), n=1)
        hint = f"; did you mean rb:{close[0]}?" if close else f" ({len(entries)} entries, e.g. rb:{next(iter(entries))})"
        raise BenchError(f"rb:{name} is not in RobustBench's {dataset} {THREAT_MODEL} zoo{hint}")
    if entries[name]["gdrive_id"] is None and model_dir is not None:  # timm's: from its hub, never model_dir
        raise BenchError(f"rb:{name} is a timm model that robustbench downloads from the Hugging Face hub; "
                         "--rb-model-dir does not apply to it")
    root = Path(model_dir or DEFAULT_DIR).expanduser()
    files = model_files(name, dataset, entries[name], root)
    missing = [f for f in files if not f.is_file()]
    try:
        net = load_model(model_name=name, model_dir=str(root), dataset=dataset, threat_model=THREAT_MODEL)
    except Exception as e:
        what = (f"{missing[0]} is missing and its download failed" if missing else
                f"cannot read {files[0]}" if files else "timm could not load it")
        raise BenchError(f"cannot load RobustBench model rb:{name}: {what}: {type(e).__name__}: "
                         f"{short_reason(e)}") from None
    return net, sha256(files[0]) if len(files) == 1 and files[0].is_file() else None
