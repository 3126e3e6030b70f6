"""Out-of-distribution (OOD) image sets for ``--suite ood`` (``--ood SET[,SET...]``).

Every set is a batch of images in [0, 1] of the in-distribution shape (C, H, W); labels are not
needed.  ``n`` is the number of points asked for (``--n-ood``, default ``n_eval``); a set with
fewer images gives all it has (the count is recorded).

Built in (drawn on the CPU from the run's seed, so every device and every torchrun rank draws the
same images):

    uniform    U[0, 1] per pixel
    gaussian   N(0.5, 0.25^2) per pixel, clamped to [0, 1] (about 4.6 % of the pixels clip)
    constant   one grey level U[0, 1] per image, the same in every pixel and channel
    inverted   1 - x of the first n test images
    vflip      the first n test images upside down (rows reversed)
    interp     (x_i + x_j) / 2 of test images i = 0..n-1 and a random partner j != i from the whole
               test split: JEM's "CIFAR-interp" (Grathwohl et al. 2020 average two test images)

Named data sets (their test split; read from ``--data-root`` like the in-distribution data):
``digits``, ``fashion-mnist``, ``cifar10``, ``cifar100`` (through ``bench.inputs.data.load``) and
``svhn`` (torchvision's ``SVHN`` test split, ``DATA/test_32x32.mat``).  Files: ``npz:PATH`` (the
array ``x``, else ``x_test``, else the file's only array; uint8 scaled by 1/255, floats must lie
in [0, 1]) and ``folder:PATH`` (every image file under PATH, recursively, in path order; they
must share one size).  A set that cannot be read is one ``BenchError`` line, never a traceback.

Shape rule (``to_shape``), one for every set: channels first, then size.  RGB -> grey by the
ITU-R BT.601 luma weights 0.299 R + 0.587 G + 0.114 B (PIL's ``convert("L")``); grey -> RGB by
repeating the channel; any other channel change is refused.  Then, where the size differs, a
bilinear resize with antialiasing (``torch.nn.functional.interpolate(mode="bilinear",
align_corners=False, antialias=True)``, the same filter as PIL's ``Image.resize(BILINEAR)``),
clamped to [0, 1].  Both steps are linear, so their order changes nothing but rounding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.core.errors import BenchError

BUILTIN = ("uniform", "gaussian", "constant", "inverted", "vflip", "interp")
NAMED = ("digits", "fashion-mnist", "cifar10", "cifar100", "svhn")
DEFAULT = "uniform,interp"  # far (noise) and near (mixtures of two test images): no files needed
GAUSSIAN_MEAN, GAUSSIAN_STD = 0.5, 0.25
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass(frozen=True)
class OODSpec:
    spec: str  # as given: uniform, svhn, npz:/data/x.npz, ...
    name: str  # its metric-name form: [a-z0-9_]+

    @property
    def kind(self) -> str:
        return self.spec.split(":", 1)[0] if self.spec.startswith(("npz:", "folder:")) else self.spec


def sanitise(s: str) -> str:
    """A name for metric names: lower case, every character outside [a-z0-9_] becomes '_'."""
    out = re.sub(r"[^a-z0-9_]", "_", s.lower()).strip("_")
    return out or "set"


def parse(spec: str | None) -> list[OODSpec]:
    """``uniform,svhn,npz:PATH`` -> specs (``None``: the default ``uniform,interp``).  Unknown
    names, missing files and two sets with one metric name are a BenchError."""
    items = [p.strip() for p in (DEFAULT if spec is None else str(spec)).split(",") if p.strip()]
    if not items:
        raise BenchError("--ood: no OOD set given")
    out: list[OODSpec] = []
    for item in items:
        if item.startswith("npz:") or item.startswith("folder:"):
            kind, path = item.split(":", 1)
            p = Path(path).expanduser()
            if kind == "npz" and not p.is_file():
                raise BenchError(f"--ood {item}: file not found")
            if kind == "folder" and not p.is_dir():
                raise BenchError(f"--ood {item}: folder not found")
            name = sanitise(p.stem if kind == "npz" else p.name)
        elif item in BUILTIN or item in NAMED:
            name = sanitise(item)
        else:
            raise BenchError(f"--ood: unknown set {item!r}; expected {', '.join(BUILTIN + NAMED)}, npz:PATH or "
                             "folder:PATH")
        if any(o.name == name for o in out):
            raise BenchError(f"--ood: two sets are both named {name!r} in metric names; rename a file")
        out.append(OODSpec(item, name))
    return out


def to_shape(x: torch.Tensor, shape, where: str = "OOD set") -> torch.Tensor:
    """Images (N, c, h, w) in [0, 1] -> (N, C, H, W) by the module's rule (channels, then a
    bilinear antialiased resize)."""
    c_to, h_to, w_to = (int(v) for v in shape)
    x = x.float()
    c = x.shape[1]
    if c != c_to:
        if c == 3 and c_to == 1:
            w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = (x * w).sum(1, keepdim=True)
        elif c == 1 and c_to == 3:
            x = x.expand(-1, 3, -1, -1)
        else:
            raise BenchError(f"{where}: cannot bring {c}-channel images to {c_to} channels "
                             "(only grey <-> RGB is defined)")
    if tuple(x.shape[2:]) != (h_to, w_to):
        x = F.interpolate(x, size=(h_to, w_to), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0, 1).contiguous()


def load(spec: OODSpec, data, n: int, generator: torch.Generator, data_root=None) -> tuple[torch.Tensor, dict]:
    """The first ``n`` images of ``spec`` in the shape of ``data`` (a ``bench.inputs.data.Dataset``), on
    the CPU, and a JSON-ready description (source, count, original shape)."""
    shape = data.input_shape
    test = data.test.x
    k = spec.kind
    info = {"spec": spec.spec}
    if k == "uniform":
        x = torch.rand((n, *shape), generator=generator)
    elif k == "gaussian":
        x = (GAUSSIAN_MEAN + GAUSSIAN_STD * torch.randn((n, *shape), generator=generator)).clamp(0, 1)
        info["rule"] = f"N({GAUSSIAN_MEAN}, {GAUSSIAN_STD}^2) per pixel, clamped to [0, 1]"
    elif k == "constant":
        x = torch.rand((n, 1, 1, 1), generator=generator).expand(n, *shape).contiguous()
    elif k == "inverted":
        x = 1 - test[:n]
    elif k == "vflip":
        x = test[:n].flip(2)
    elif k == "interp":
        m = len(test)
        if m < 2:
            raise BenchError("--ood interp: needs at least two test images")
        n = min(n, m)
        shift = torch.randint(1, m, (n,), generator=generator)  # partner (i + shift) mod m != i
        partner = (torch.arange(n) + shift) % m
        x = (test[:n] + test[partner]) / 2
        info["rule"] = "(x_i + x_j) / 2, j a random other test image"
    else:
        raw, info_raw = _read(spec, data, n, data_root)
        info.update(info_raw)
        info["original_shape"] = list(raw.shape[1:])
        x = to_shape(raw[:n], shape, f"--ood {spec.spec}")
    x = x[:n].float().contiguous()
    info["n"] = len(x)
    return x, info


def _read(spec: OODSpec, data, n: int, data_root) -> tuple[torch.Tensor, dict]:
    """The raw images (N, c, h, w) in [0, 1] of a named data set or file (at most n of them)."""
    from bench.inputs import data as _data

    k = spec.kind
    if k in ("digits", "fashion-mnist", "cifar10", "cifar100"):
        if spec.spec == data.name:
            raise BenchError(f"--ood {spec.spec}: that is the in-distribution data set")
        try:
            ds = _data.load(spec.spec, data_root)
        except BenchError as e:
            raise BenchError(f"--ood {spec.spec}: {e}") from None
        return ds.test.x[:n], {"source": f"bench.inputs.data.load({spec.spec!r}) test split"}
    if k == "svhn":
        return _svhn(n, data_root), {"source": "torchvision SVHN test split"}
    path = Path(spec.spec.split(":", 1)[1]).expanduser()
    if k == "npz":
        return _npz(path, n), {"source": str(path)}
    return _folder(path, n), {"source": str(path)}


def _svhn(n: int, data_root) -> torch.Tensor:
    root = Path(data_root or "data").expanduser()
    f = root / "test_32x32.mat"
    if not f.is_file():
        raise BenchError(f"--ood svhn: not found under {root}: expected {f}")
    try:
        import torchvision

        ds = torchvision.datasets.SVHN(str(root), split="test", download=False)
    except Exception as e:  # a corrupt file, a missing scipy: one line
        raise BenchError(f"--ood svhn: cannot read {f}: {type(e).__name__}: {str(e)[:150]}") from None
    return torch.from_numpy(np.ascontiguousarray(ds.data[:n])).float() / 255.0  # (N, 3, 32, 32) uint8


def _npz(path: Path, n: int) -> torch.Tensor:
    from bench.inputs.data import as_images

    try:
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            key = "x" if "x" in names else "x_test" if "x_test" in names else names[0] if len(names) == 1 else None
            if key is None:
                raise BenchError(f"--ood npz:{path}: needs an array x (or x_test, or a single array); found {names}")
            arr = z[key][:n]
    except BenchError:
        raise
    except Exception as e:
        raise BenchError(f"--ood npz:{path}: cannot read: {type(e).__name__}: {e}") from None
    return as_images(arr, f"--ood npz:{path}")


def _folder(path: Path, n: int) -> torch.Tensor:
    from bench.inputs import images
    from bench.inputs.data import as_images

    files, broken = images.image_files(path, tuple(IMAGE_SUFFIXES), recursive=True)
    images.warn_broken(f"--ood folder:{path}", broken)
    if not files:
        raise BenchError(f"--ood folder:{path}: no image files in it")
    return as_images(images.read_images(files[:n], f"--ood folder:{path}"), f"--ood folder:{path}")
