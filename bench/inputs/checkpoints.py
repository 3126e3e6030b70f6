"""Save and load models.

Own format: a ``.safetensors`` file with the network's tensors under ``model.`` (and an optional
SGLD replay buffer under ``replay_buffer``) and one metadata entry ``bench`` holding JSON: arch and
its arguments, num_classes, dataset, normalisation, input shape, method, recipe, epochs, seed,
threat model, final metrics, package version.  Loading never unpickles code: safetensors, or
``torch.load(weights_only=True)`` for foreign files.

Accepted ``--model`` forms:
    PATH.safetensors        written by ``bench train`` / ``save``
    PATH.pt / PATH.pth      a plain state dict (``--arch`` required; ``module.`` is stripped),
                            or a JEM checkpoint (``model_state_dict`` with ``f.*`` and ``class_output.*``)
    py:module:function      a factory returning an nn.Module (or an EnergyModel); runs only when named
    rb:NAME                 a RobustBench model zoo entry (the robustbench extra; its file from
                            --rb-model-dir, downloaded only when missing: bench.inputs.rb_zoo)

Normalisation (the model's mean and std, applied to [0, 1] inputs): the own format records it; a JEM
checkpoint takes JEM's (x - 0.5) / 0.5; anything else takes ``normalize`` (``--normalize``: a
preset of ``NORMALIZE_PRESETS`` or ``M1,M2,M3/S1,S2,S3``), else mean 0 and std 1, which for a plain
state dict is a guess and says so (``meta['normalization']['warning']``).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from bench import __version__
from bench.core import pyspec
from bench.core.energy import EnergyModel
from bench.core.errors import BenchError
from bench.core.errors import short_reason as _short
from bench.core.fileio import atomic_write_bytes, sha256
from bench.inputs import nets, rb_zoo, state_dicts
from bench.inputs.checkpoint_file import CheckpointFile, read
from bench.inputs.normalization import (  # noqa: F401  (NORMALIZE_PRESETS, parse_normalize: re-exported)
    NORMALIZE_PRESETS,
    PLAIN_STATE_DICT_WARNING,
    floats,
    parse_normalize,
    record,
)

FORMAT = 1

@dataclass
class Loaded:
    """A loaded model: its EnergyModel and what is known about it."""

    model: EnergyModel
    meta: dict
    path: str
    sha256: str | None
    replay_buffer: torch.Tensor | None = None  # SGLD replay buffer, images in [0, 1] whatever the file format
    extra: dict = field(default_factory=dict)

    weights_sha256: str | None = None  # weights_sha256(model), set by ``load`` (and, for a lazy module,
    # by the runner after the first forward pass, which initialises it: ``is_lazy``)

    @property
    def label(self) -> str:
        """A short name for figures: a file's stem (``digits-jeat``), a module's class, a spec."""
        if self.meta.get("source_format") == "module":
            return str(self.meta.get("arch", "")).rpartition(".")[2]
        return Path(self.path).stem if self.meta.get("source_format") not in ("py", "robustbench") else self.path

    def describe(self) -> dict:
        """The ``model`` block of results.json."""
        m = self.meta
        return {"path": self.path, "sha256": self.sha256, "weights_sha256": self.weights_sha256,
                "arch": m.get("arch"), "method": m.get("method"), "dataset": m.get("dataset"),
                "num_classes": m.get("num_classes"), "normalization": m.get("normalization"),
                "recipe": m.get("recipe")}


def weights_sha256(model: nn.Module) -> str:
    """sha256 of every tensor of ``model`` as it will run (parameters and buffers, the EnergyModel's
    non-persistent mean and std included), by name in sorted order, each with its dtype and shape:
    the identity of what is evaluated, whatever file or factory it came from."""
    tensors = dict(model.state_dict())
    tensors.update(dict(model.named_buffers()))
    h = hashlib.sha256()
    for name in sorted(tensors):
        if isinstance(tensors[name], nn.parameter.UninitializedTensorMixin):  # a lazy module before its first call
            h.update(f"{name}|uninitialized|".encode())
            continue
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def is_lazy(model: nn.Module) -> bool:
    """Whether some of ``model``'s weights exist only after its first forward pass (``nn.LazyLinear``)."""
    return any(isinstance(t, nn.parameter.UninitializedTensorMixin)
               for t in itertools.chain(model.parameters(), model.buffers()))


def save(path: str | Path, model: EnergyModel, meta: dict, replay_buffer: torch.Tensor | None = None) -> str:
    """Write ``model`` with ``meta`` as safetensors; returns the file's sha256."""
    from safetensors.torch import save as st_save

    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.net.state_dict().items()}
    if replay_buffer is not None:
        tensors["replay_buffer"] = replay_buffer.detach().contiguous().cpu()
    meta = {"format": FORMAT, "bench_version": __version__, "torch_version": torch.__version__,
            "mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist(), **meta}
    atomic_write_bytes(path, st_save(tensors, metadata={"bench": json.dumps(meta)}))
    return sha256(path)


def build_model(meta: dict) -> EnergyModel:
    net = nets.build(meta["arch"], meta["num_classes"], meta["input_shape"][0], **meta.get("arch_kwargs", {}))
    return EnergyModel(net, meta.get("mean", 0.0), meta.get("std", 1.0), meta["input_shape"], meta["num_classes"])


def load(spec: str | nn.Module | CheckpointFile, arch: str | None = None, num_classes: int | None = None,
         input_shape: tuple | None = None, arch_kwargs: dict | None = None,
         mean=None, std=None, normalize: str | None = None, rb_model_dir: str | Path | None = None) -> Loaded:
    """Load any accepted ``--model`` form (see module docstring), or an nn.Module in memory.  ``num_classes`` and
    ``input_shape`` come from the data set for foreign files that do not record them.
    ``normalize`` (``--normalize``, see ``parse_normalize``) or ``mean``/``std`` set the
    normalisation of a foreign model; ``meta['normalization']`` records what was used and why.
    ``rb_model_dir`` (``--rb-model-dir``): where ``rb:NAME`` files are, in RobustBench's layout.
    A file is read once (``bench.inputs.checkpoint_file.read``; or give the ``CheckpointFile``
    read already) and its weights hashed once (``weights_sha256``)."""
    given = None
    if normalize is not None:
        mean, std = parse_normalize(normalize)
        given = f"--normalize {normalize}"
    elif mean is not None or std is not None:
        mean, std = 0.0 if mean is None else mean, 1.0 if std is None else std
        given = "given mean/std"
    if given and input_shape:
        n = max(len(floats(mean)), len(floats(std)))
        if n not in (1, input_shape[0]):
            raise BenchError(f"{given}: {n} channel values but the images have {input_shape[0]} channels")
    if isinstance(spec, nn.Module):  # a model in memory (bench.evaluate)
        loaded = _load_module(spec, num_classes, input_shape, mean, std, given)
    elif isinstance(spec, str) and spec.startswith("py:"):
        loaded = _load_factory(spec, num_classes, input_shape, mean, std, given)
    elif isinstance(spec, str) and spec.startswith("rb:"):
        loaded = _load_robustbench(spec, num_classes, input_shape, mean, std, given, rb_model_dir)
    else:
        file = spec if isinstance(spec, CheckpointFile) else read(spec)
        if file.is_safetensors:
            if given:
                raise BenchError(f"{given}: {file.path} records its own normalisation; --normalize is for plain "
                                 "state dicts, JEM checkpoints and py:/rb: models")
            loaded = _load_own(file)
            loaded.meta["normalization"] = record(loaded.model, "checkpoint metadata")
        else:
            loaded = _load_torch(file, arch, num_classes, input_shape, arch_kwargs or {}, mean, std, given)
    if loaded.weights_sha256 is None:
        loaded.weights_sha256 = weights_sha256(loaded.model)
    return loaded


def _load_own(file: CheckpointFile) -> Loaded:
    from safetensors.torch import load as tensors_of

    path = file.path
    try:
        raw = file.metadata().get("bench")
        tensors = tensors_of(file.data)
    except Exception as e:
        raise BenchError(f"{path}: not a readable safetensors checkpoint ({type(e).__name__}: {_short(e)})") from None
    if raw is None:
        raise BenchError(f"{path}: safetensors file without bench metadata; pass a .pt state dict with --arch instead")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise BenchError(f"{path}: corrupt bench metadata") from None
    _check_meta(meta, path)
    try:
        model = build_model(meta)
    except BenchError as e:
        raise BenchError(f"{path}: bench metadata: {e}") from None
    except Exception as e:  # e.g. input_shape [0] or an arch_kwargs the network does not take
        raise BenchError(f"{path}: bench metadata does not build a model ({type(e).__name__}: {_short(e)})") from None
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    state_dicts.load_state(model.net, state, str(path), meta["arch"])
    return Loaded(model.eval(), meta, str(path), file.sha256, tensors.get("replay_buffer"))


def _check_meta(meta, path: Path) -> None:
    """The metadata fields ``build_model`` needs, with their types: a one-line error otherwise."""
    if not isinstance(meta, dict):
        raise BenchError(f"{path}: bench metadata is a JSON {type(meta).__name__}, expected an object")
    need = {"arch": str, "num_classes": int, "input_shape": list}
    missing = [k for k in need if k not in meta]
    if missing:
        raise BenchError(f"{path}: bench metadata lacks {', '.join(missing)}")
    bad = [k for k, t in need.items() if not isinstance(meta[k], t) or isinstance(meta[k], bool)]
    if not isinstance(meta.get("arch_kwargs", {}), dict):
        bad.append("arch_kwargs")
    if isinstance(meta["input_shape"], list) and not (len(meta["input_shape"]) == 3 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in meta["input_shape"])):
        bad.append("input_shape")
    if bad:
        raise BenchError(f"{path}: bench metadata has a bad {bad[0]}: {meta.get(bad[0])!r}")


def _load_torch(file: CheckpointFile, arch, num_classes, input_shape, arch_kwargs, mean, std, given=None) -> Loaded:
    path = file.path
    try:
        obj = torch.load(io.BytesIO(file.data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise BenchError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {_short(e)})") from None
    if not isinstance(obj, dict):
        raise BenchError(f"{path}: not a checkpoint (holds a {type(obj).__name__}, expected a state dict)")
    replay = obj.get("replay_buffer") if isinstance(obj.get("replay_buffer"), torch.Tensor) else None
    state = state_dicts.unwrap(obj, path)
    if num_classes is None or input_shape is None:
        raise BenchError(f"{path}: a foreign checkpoint needs the data set to know num_classes and input shape")
    is_jem = any(k.startswith("f.") for k in state) and "class_output.weight" in state
    if is_jem:
        arch = arch or state_dicts.jem_arch(state)
        mean = 0.5 if mean is None else mean  # JEM trains on (x - 0.5) / 0.5
        std = 0.5 if std is None else std
        method = "jem"
    elif arch is None:
        raise BenchError(f"{path}: a plain state dict needs --arch (one of {', '.join(nets.names())}, "
                         "or py:module:Class for your own)")
    else:
        method = None
    head = state.get("class_output.weight", state.get("fc.weight", state.get("linear.weight")))
    if head is not None and head.ndim == 2 and head.shape[0] != num_classes:
        raise BenchError(f"{path}: the model has {head.shape[0]} classes but the data set has {num_classes}")
    kwargs = dict(arch_kwargs)
    if is_jem and "energy_output.weight" not in state:
        kwargs.setdefault("energy_head", False)
    meta = {"arch": arch, "arch_kwargs": kwargs, "num_classes": num_classes, "input_shape": list(input_shape),
            "mean": 0.0 if mean is None else mean, "std": 1.0 if std is None else std, "method": method,
            "source_format": "jem" if is_jem else "state_dict"}
    model = build_model(meta)
    state_dicts.load_state(model.net, state, str(path), arch)
    if given:
        meta["normalization"] = record(model, given)
    elif is_jem:
        meta["normalization"] = record(model, "JEM checkpoint: JEM's (x - 0.5) / 0.5 input scaling")
        if replay is not None:  # JEM stores its buffer in its normalised space: handed over in [0, 1]
            replay = replay.float() * model.std + model.mean
    else:
        meta["normalization"] = record(model, "default (mean 0, std 1)", PLAIN_STATE_DICT_WARNING)
    return Loaded(model.eval(), meta, str(path), file.sha256, replay)


def _load_factory(spec: str, num_classes, input_shape, mean, std, given=None) -> Loaded:
    factory = pyspec.resolve(spec)  # from sys.path or the current directory
    try:
        obj = factory()
    except BenchError:
        raise
    except Exception as e:  # the factory's own error, never mistaken for a bad spec
        raise BenchError(f"factory {spec!r} raised {type(e).__name__}: {_short(e)}") from None
    if not isinstance(obj, nn.Module):
        raise BenchError(f"factory {spec!r} returned {type(obj).__name__}, expected an nn.Module")
    model, meta = _wrap_module(obj, f"factory {spec!r}", "factory", num_classes, input_shape, mean, std, given)
    return Loaded(model.eval(), dict(meta, arch=spec, source_format="py"), spec, None)


def _wrap_module(obj: nn.Module, what: str, kind: str, num_classes, input_shape, mean, std, given) -> tuple[EnergyModel, dict]:
    """An nn.Module (logits of [0, 1] images, or of images normalised by ``mean``/``std``) or an
    EnergyModel (which sets its own normalisation) as an EnergyModel, with its metadata."""
    if isinstance(obj, EnergyModel):
        if given:
            raise BenchError(f"{given}: {what} is an EnergyModel, which sets its own normalisation")
        model, source = obj, f"the {kind}'s EnergyModel"
    else:
        model = EnergyModel(obj, 0.0 if mean is None else mean, 1.0 if std is None else std, input_shape, num_classes)
        source = given or f"default (mean 0, std 1: the {kind}'s module takes [0, 1] images)"
    meta = {"num_classes": model.num_classes or num_classes, "input_shape": list(model.input_shape or input_shape or []),
            "method": None, "normalization": record(model, source)}
    return model, meta


def remember_source(loaded: Loaded) -> EnergyModel:
    """``loaded``'s model, remembering the file it came from (``bench.load``): evaluated in memory
    with its weights unchanged, it is that file again (``_load_module``)."""
    model = loaded.model
    model.bench_source = {"path": loaded.path, "sha256": loaded.sha256, "meta": dict(loaded.meta),
                          "weights_sha256": loaded.weights_sha256, "replay_buffer": loaded.replay_buffer}
    return model


def _load_module(obj: nn.Module, num_classes, input_shape, mean, std, given=None) -> Loaded:
    """A model in memory (``bench.evaluate``): no file, so its identity is the sha256 of its state
    dict (``module_sha256``) and its class name, recorded where a file's sha256 and path go.  A
    model ``bench.load`` returned (``remember_source``) whose weights and normalisation are still
    the file's is that file: its path, sha256 and metadata (method, data set, threat model)."""
    source = getattr(obj, "bench_source", None)
    digest = weights_sha256(obj) if isinstance(obj, EnergyModel) else None  # an EnergyModel runs as it is
    if digest is not None and isinstance(source, dict) and not given and digest == source.get("weights_sha256"):
        return Loaded(obj.eval(), dict(source["meta"]), source["path"], source["sha256"], source.get("replay_buffer"),
                      weights_sha256=digest)
    what = f"{type(obj).__module__}.{type(obj).__qualname__}"
    model, meta = _wrap_module(obj, f"module {what}", "given", num_classes, input_shape, mean, std, given)
    inner = model.net if isinstance(obj, EnergyModel) else obj
    meta = dict(meta, arch=f"{type(inner).__module__}.{type(inner).__qualname__}", source_format="module")
    return Loaded(model.eval(), meta, f"<in memory: {what}>", digest or module_sha256(obj), weights_sha256=digest)


def module_sha256(module: nn.Module) -> str:
    """sha256 of a module's state dict (``weights_sha256`` of the module itself, without the
    normalisation an EnergyModel around it adds): what identifies a model that is not a file."""
    return weights_sha256(module)


def _load_robustbench(spec: str, num_classes, input_shape, mean, std, given, model_dir) -> Loaded:
    net, file_sha256 = rb_zoo.load_net(spec[3:], num_classes, model_dir)
    # RobustBench models take [0, 1] and normalise inside: mean 0, std 1 unless --normalize says otherwise
    model = EnergyModel(net, 0.0 if mean is None else mean, 1.0 if std is None else std, input_shape, num_classes)
    meta = {"arch": spec, "num_classes": num_classes, "input_shape": list(input_shape or []),
            "method": None, "source_format": "robustbench",
            "normalization": record(model, given or "default (mean 0, std 1: RobustBench models take [0, 1])")}
    return Loaded(model.eval(), meta, spec, file_sha256)
