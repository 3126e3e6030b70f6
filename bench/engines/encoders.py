"""Feature extractors beyond Inception, built offline and loaded from a local weights file
(``--fid-extractor NAME --extractor-weights PATH``): FID, KID and precision/recall are then computed
in that network's features (FD-DINOv2 is what Stein et al. 2023, dgm-eval, recommend in place of
Inception).  Nothing is downloaded: torch-fidelity's own DINOv2, CLIP and VGG16 extractors fetch
code (torch hub) or weights from the network, so the names below are built here instead.

    dinov2-vit-s14, -b14, -l14   DINOv2's ViT (``bench.inputs.nets.vit_dinov2``, its state-dict layout:
                                 ``dinov2_vits14_pretrain.pth`` ...); the class token, 384/768/1024-d
    clip-vit-b32, -b16, -l14     CLIP's visual tower (torch-fidelity's vendored ``VisionTransformer``
                                 under ``visual.``); a full CLIP file (the official TorchScript
                                 ``ViT-B-32.pt`` or its state dict) loads with its text tower dropped;
                                 512/512/768-d
    vgg16                        torchvision's VGG16 (``vgg16-397923af.pth``), fc2 after ReLU, 4096-d

torch-fidelity's spellings (``dinov2-vit-s-14``, ``clip-vit-b-32``) name the same networks.  Each
runs exactly as torch-fidelity runs its own: uint8 RGB, its TF1-compatible bilinear resize to the
network's input size (224), ``normalize`` with the network's mean and std (x 255), the network in
float32.  The weights file: ``.safetensors``, a TorchScript archive (read with ``torch.jit.load``,
as torch-fidelity reads CLIP's), or a state dict read with ``torch.load(weights_only=True)``
(``state_dict``/``model`` wrappers and a ``module.`` prefix are unwrapped).  It loads strictly: a
missing or unexpected key or a shape that differs is a one-line error naming it.  The extractor's
identity (cache keys, results.json ``details.extractor_identity``) is the name and the file's sha256.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bench.core.errors import BenchError

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP_NORM = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
# (embed_dim, width, layers, patch) of CLIP's ViT visual towers at 224 x 224
CLIP_CONFIGS = {"b32": (512, 768, 12, 32), "b16": (512, 768, 12, 16), "l14": (768, 1024, 24, 14)}
# keys of a full CLIP file that are not the visual tower (its text tower), dropped when loading
CLIP_TEXT_KEYS = ("input_resolution", "context_length", "vocab_size", "positional_embedding", "text_projection",
                  "logit_scale", "token_embedding.weight")
CLIP_TEXT_PREFIXES = ("transformer.", "ln_final.")


@dataclass(frozen=True)
class Encoder:
    """One offline encoder: ``build()`` makes the network (normalised float images -> features),
    ``feature`` names its output, ``size`` its input side, ``mean``/``std`` its normalisation on
    [0, 1]; ``drop`` says which keys of a weights file are not the network's (skipped, not an error);
    ``finish`` trims the loaded network (VGG16's classifier tail)."""

    name: str
    build: object
    feature: str
    size: int = 224
    mean: tuple = IMAGENET[0]
    std: tuple = IMAGENET[1]
    drop: object = None
    finish: object = None
    about: str = ""


class NeverCompiled:
    """torch-fidelity's compile hooks of an extractor here, which runs eagerly (its own TorchScript
    or a strictly loaded network): never compiled, so the dummy input is never used for that."""

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return (torch.rand([1, 3, 4, 4]) * 255).to(torch.uint8)


def _dinov2(size: str):
    def build():
        from bench.inputs.nets.vit_dinov2 import dinov2

        return dinov2(size)
    return build


class _ClipVisual(nn.Module):
    """CLIP's visual tower under ``visual.`` (the keys of a CLIP file), torch-fidelity's vendored
    ``VisionTransformer``; forward: the projected class token."""

    def __init__(self, embed: int, width: int, layers: int, patch: int, resolution: int = 224):
        super().__init__()
        from torch_fidelity.feature_extractor_clip import VisionTransformer

        self.visual = VisionTransformer(resolution, patch, width, layers, width // 64, embed)

    def forward(self, x):
        return self.visual(x)


def _clip(size: str):
    def build():
        return _ClipVisual(*CLIP_CONFIGS[size])
    return build


def _clip_drop(key: str) -> bool:
    return key in CLIP_TEXT_KEYS or key.startswith(CLIP_TEXT_PREFIXES)


def _vgg16():
    import torchvision

    return torchvision.models.vgg16()


def _vgg16_fc2_relu(net: nn.Module) -> nn.Module:
    for i in (6, 5):  # torch-fidelity keeps classifier[:4] (fc2) and applies the ReLU for fc2_relu
        del net.classifier[i]
    return net


ENCODERS: dict[str, Encoder] = {}
ALIASES: dict[str, str] = {}


def register(enc: Encoder, *aliases: str) -> Encoder:
    """Add an encoder (tests register small ones of the same layouts)."""
    ENCODERS[enc.name] = enc
    for a in aliases:
        ALIASES[a] = enc.name
    return enc


for _s in ("s14", "b14", "l14"):
    register(Encoder(f"dinov2-vit-{_s}", _dinov2(_s), "dinov2",
                     about=f"DINOv2 ViT-{_s[0].upper()}/14 class token"), f"dinov2-vit-{_s[0]}-14")
for _s in CLIP_CONFIGS:
    register(Encoder(f"clip-vit-{_s}", _clip(_s), "clip", 224, *CLIP_NORM, drop=_clip_drop,
                     about=f"CLIP ViT-{_s[0].upper()}/{_s[1:]} image embedding"), f"clip-vit-{_s[0]}-{_s[1:]}")
register(Encoder("vgg16", _vgg16, "fc2_relu", finish=_vgg16_fc2_relu, about="VGG16 fc2 after ReLU"))


def canonical(name: str | None) -> str | None:
    """The encoder a ``fid_extractor`` name means, or None when it is none of these."""
    n = (name or "").strip()
    n = n[len("jeat-"):] if n.startswith("jeat-") else n
    n = ALIASES.get(n, n)
    return n if n in ENCODERS else None


# --------------------------------------------------------------------------------------------
# weights


def read_state(path: str | Path) -> dict:
    """A state dict from a weights file (module docstring), never unpickled unsafely."""
    p = Path(path)
    if not p.is_file():
        raise BenchError(f"extractor weights file not found: {p}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        elif zipfile.is_zipfile(p) and any(n.endswith("/constants.pkl") or n.startswith("code/") or "/code/" in n
                                           for n in zipfile.ZipFile(p).namelist()):
            state = torch.jit.load(str(p), map_location="cpu").state_dict()  # TorchScript: no pickle of Python objects
        else:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        raise BenchError(f"extractor weights {p}: not loadable ({type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0][:120]})") from None
    for wrap in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrap), dict):
            state = state[wrap]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise BenchError(f"extractor weights {p}: not a state dict of tensors")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def load_strict(enc: Encoder, state: dict, where: str) -> nn.Module:
    """``enc``'s network with ``state`` loaded strictly (BenchError naming the first keys that
    are missing, unexpected or of another shape), in float32 eval mode."""
    net = enc.build()
    drop = enc.drop or (lambda k: False)
    state = {k: v for k, v in state.items() if not drop(k)}
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})" for k in own
              if k in state and state[k].shape != own[k].shape]

    def few(keys):
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shapes differ", shapes)):
        if keys:
            raise BenchError(f"extractor weights {where} do not fit {enc.name}: {what}: {few(keys)}")
    net.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    if enc.finish is not None:
        net = enc.finish(net)
    return net.to(torch.float32).requires_grad_(False).eval()


# --------------------------------------------------------------------------------------------
# torch-fidelity feature extractors


_CLASSES: dict = {}


def extractor_name(name: str) -> str:
    return f"jeat-{name}"


def extractor_class(name: str):
    """The torch-fidelity feature extractor class of encoder ``name``, registered (once) under
    ``jeat-NAME``."""
    from torch_fidelity import register_feature_extractor
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    enc = ENCODERS[name]
    reg = extractor_name(name)
    if reg in _CLASSES:
        return _CLASSES[reg]
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.helpers import vassert

    class LocalEncoder(NeverCompiled, FeatureExtractorBase):
        """An offline encoder behind torch-fidelity's preprocessing (module docstring)."""

        ENCODER = enc

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            vassert(feature_extractor_weights_path is not None, f"{name} needs its weights file (it never downloads)")
            self.net = load_strict(enc, read_state(feature_extractor_weights_path), feature_extractor_weights_path)
            self.requires_grad_(False)
            self.eval()

        def forward(self, x):
            from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

            vassert(torch.is_tensor(x) and x.dtype == torch.uint8, "Expecting image as torch.Tensor with dtype=torch.uint8")
            vassert(x.dim() == 4 and x.shape[1] == 3, f"Input is not Bx3xHxW: {x.shape}")
            x = interpolate_bilinear_2d_like_tensorflow1x(x.to(torch.float32), size=(enc.size, enc.size),
                                                          align_corners=False)
            mean = torch.tensor(enc.mean, device=x.device).view(1, 3, 1, 1) * 255
            std = torch.tensor(enc.std, device=x.device).view(1, 3, 1, 1) * 255
            return (self.net((x - mean) / std).to(torch.float32),)

        @staticmethod
        def get_provided_features_list():
            return (enc.feature,)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            vassert(metric in ("fid", "kid", "prc"), f"{enc.name} has no logits for {metric}")
            return enc.feature

    LocalEncoder.__name__ = LocalEncoder.__qualname__ = f"LocalEncoder_{name.replace('-', '_')}"
    if reg not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(reg, LocalEncoder)
    _CLASSES[reg] = FEATURE_EXTRACTORS_REGISTRY[reg]
    return _CLASSES[reg]


def no_weights(name: str) -> str:
    return (f"fid_extractor {name} needs --extractor-weights PATH (its weights file; nothing is downloaded), "
            f"e.g. {'dinov2_vits14_pretrain.pth' if name.startswith('dinov2') else 'ViT-B-32.pt' if 'clip' in name else 'vgg16-397923af.pth'}")
