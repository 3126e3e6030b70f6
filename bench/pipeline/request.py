"""One ``bench run`` as a request (``RunRequest``: the model, suites, data, settings, out, device and
the run's own options), given whole to the runner (``bench.pipeline.runner.run_request``), and its
resolution (``resolve``: the model file read once and its weights hashed once, the data set, the
settings, the groups), done before --out is touched, so a bad argument fails in seconds."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import torch

from bench.core import progress
from bench.core.errors import BenchError
from bench.core.settings import DEFAULTS, Norm, complete, dataset_defaults, validate
from bench.engines import shift_stats
from bench.inputs import checkpoint_file, checkpoints, data, zoo
from bench.metrics import Group, suites
from bench.runtime import fastpath


@dataclass(frozen=True)
class RunRequest:
    """What one ``bench run`` (or ``bench.evaluate``) asks for, as given: ``model`` (a file, a
    released name, ``py:``/``rb:`` spec, an ``nn.Module``, or None: the released model), ``suite``,
    ``out``, ``dataset`` (a name, or a ``Dataset`` in memory), ``settings`` (the command line's,
    read-only), ``device``; ``name`` (the run's row label), ``rb_model_dir`` (the folder of
    ``rb:NAME`` files) and ``plan_only`` (``--plan``) key no cache."""

    model: str | torch.nn.Module | None = None
    suite: str | list = "all"
    out: Path = Path("runs/default")
    dataset: str | data.Dataset | None = None
    data_root: str | None = None
    arch: str | None = None
    device: str = "auto"
    resume: bool = True
    download: bool = False
    settings: Mapping = field(default_factory=dict)
    log: Callable = progress.say
    name: str | None = None
    rb_model_dir: str | Path | None = None
    plan_only: bool = False

    def __post_init__(self):
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings or {})))


@dataclass(frozen=True)
class Resolved:
    """A request resolved: its suites and groups (their metric names fixed for the settings), the
    loaded model, the data set and the settings (the plan may still lower ``batch_size``)."""

    suite_names: list[str]
    groups: list[Group]
    loaded: checkpoints.Loaded
    data: data.Dataset
    settings: dict


def resolve(request: RunRequest) -> Resolved:
    """Everything a bad argument fails in, before --out is touched (``bench.pipeline.several``
    resolves every model of a run first)."""
    suite_names = suites.resolve(request.suite)
    groups = suites.groups_for(suite_names)
    settings = dict(request.settings)
    loaded, ds = resolve_model(request.model, request.dataset, request.data_root, request.arch, request.download,
                               settings.get("normalize"), request.rb_model_dir)
    s = resolve_settings(settings, loaded, ds)
    # metric names that depend on the settings (the OOD group: one per --ood set) are fixed here,
    # before any cache is read (bench.metrics.Group.for_settings); a bad --ood fails here, early;
    # a group with no metrics under these settings (the robustness curve without --eps-grid, the
    # adaptive attacks without a defence) does not run
    return Resolved(suite_names, [g for g in (g.for_settings(s) for g in groups) if g.metrics], loaded, ds, s)


def resolve_model(spec, dataset, data_root, arch, download=False, normalize=None,
                  rb_model_dir=None) -> tuple[checkpoints.Loaded, data.Dataset]:
    """-> (Loaded, Dataset).  Own files name their data set; foreign ones and a model in memory
    (an nn.Module, ``bench.evaluate``) need --dataset.  ``dataset``: a name, or a ``Dataset``
    already in memory (``bench.evaluate(data=(x, y))``).  ``rb_model_dir``: where ``rb:NAME`` files
    are.  A file is read once (its metadata names the data set, the model is built from the same
    bytes) and the weights hashed once (a lazy module's after its first forward pass)."""
    in_memory = isinstance(spec, torch.nn.Module)
    if not in_memory:
        spec = zoo.resolve_spec(spec) if spec else str(zoo.released_path())
    file = None if in_memory or spec.startswith(("py:", "rb:")) else checkpoint_file.read(spec)
    given = dataset if isinstance(dataset, data.Dataset) else None  # data in memory (bench.evaluate)
    name = (given.name if given else dataset) or ((file.bench_meta() if file else None) or {}).get("dataset")
    if name is None:
        if in_memory:
            raise BenchError("a model in memory records no data set; pass dataset=")
        if file is not None:
            checkpoints.load(file, arch=arch)  # an unreadable file says so first
        raise BenchError(f"{spec}: the checkpoint does not record its data set; pass --dataset")
    ds = given or data.load(name, data_root, download)
    if len(ds.test) == 0 or len(ds.train) == 0:
        raise BenchError(f"data set {name} is empty")
    loaded = checkpoints.load(file or spec, arch=arch, num_classes=ds.num_classes, input_shape=ds.input_shape,
                              normalize=normalize, rb_model_dir=rb_model_dir)
    lazy = checkpoints.is_lazy(loaded.model)
    check_compatible(loaded, ds)
    if lazy:  # its weights were drawn in check_compatible's forward pass: they are what is evaluated
        loaded.weights_sha256 = checkpoints.weights_sha256(loaded.model)
    return loaded, ds


def check_compatible(loaded: checkpoints.Loaded, ds: data.Dataset) -> None:
    m = loaded.meta
    if m.get("num_classes") not in (None, ds.num_classes):
        raise BenchError(f"model has {m['num_classes']} classes but data set {ds.name} has {ds.num_classes}")
    shape = tuple(m.get("input_shape") or ())
    if shape and shape[0] != ds.input_shape[0]:
        raise BenchError(f"model takes {shape[0]}-channel images but {ds.name} has {ds.input_shape[0]} channels")
    if shape and m.get("source_format") is None and shape != ds.input_shape:
        raise BenchError(f"model was trained on {shape} images but {ds.name} has {ds.input_shape}")
    try:
        with torch.no_grad():
            out = loaded.model.logits(ds.test.x[:2])
    except RuntimeError as e:
        raise BenchError(f"model does not accept {ds.name} images of shape {ds.input_shape}: {str(e)[:150]}") from None
    if not isinstance(out, torch.Tensor):
        raise BenchError(f"model's forward returned a {type(out).__name__}, expected a tensor of logits "
                         f"(N, {ds.num_classes}); wrap the network so that it returns the logits alone")
    if out.ndim != 2 or out.shape[1] != ds.num_classes:
        raise BenchError(f"model outputs shape {tuple(out.shape)}, expected (N, {ds.num_classes})")


def resolve_settings(overrides: dict, loaded: checkpoints.Loaded, ds: data.Dataset) -> dict:
    s = dict(DEFAULTS)
    s.update(dataset_defaults(ds.name))
    tm = loaded.meta.get("threat_model") or {}
    if tm.get("eps") is not None and loaded.meta.get("dataset") == ds.name and tm.get("norm", "Linf") == "Linf":
        s["eps"] = float(tm["eps"])
    linf_eps = s["eps"]  # the landscape's default radius stays L-inf sized under --norm L2
    if overrides.get("norm") not in (None, "Linf"):  # the eps default follows the norm
        s["eps"] = dataset_defaults(ds.name, overrides["norm"]).get("eps", s["eps"])
        if tm.get("eps") is not None and loaded.meta.get("dataset") == ds.name and tm.get("norm") == overrides["norm"]:
            s["eps"] = float(tm["eps"])
    s.update({k: v for k, v in overrides.items() if v is not None})
    validate_settings(s, ds.input_shape)
    # the shift suite's corruptions depend on the image size (its metric names follow them)
    s["shift_corruptions"] = ",".join(shift_stats.chosen(s.get("shift_corruptions"), ds.input_shape))
    return complete(s, linf_eps=s["eps"] if s["norm"] == Norm.LINF else linf_eps)


def validate_settings(s: dict, input_shape=None) -> None:
    """Every setting against its declaration (``settings.validate``) and the fast paths."""
    validate(s, input_shape)
    fastpath.FastPath.from_settings(s)  # an unknown amp mode is an error


def train_used(loaded: checkpoints.Loaded) -> int | None:
    """How many training points (the first ones) the checkpoint trained on, where it records it
    (its recipe's ``train_n``); None: all of them, or nothing recorded."""
    n = (loaded.meta.get("recipe_config") or {}).get("train_n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None
