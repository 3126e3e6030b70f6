"""Data sets by name, all as images in [0, 1] of shape (N, C, H, W) with int64 labels.

    digits        scikit-learn's bundled ``load_digits`` (1797 real 8x8 digits), a fixed stratified
                  75/25 train/test split, scaled to [0, 1]; runs anywhere, no download
    cifar10       torchvision CIFAR-10 from ``--data-root`` (downloads only when asked)
    cifar100      torchvision CIFAR-100 likewise
    cifar10-c     CIFAR-10 from ``--data-root`` with the official CIFAR-10-C beside it
                  (``DIR/CIFAR-10-C/<corruption>.npy`` and ``labels.npy``) in ``info["corrupted"]``;
                  ``cifar100-c`` likewise (``bench.inputs.corrupted``)
    fashion-mnist Fashion-MNIST (60,000 + 10,000 28x28 grey images, the official split) from the
                  IDX files (gzipped or not) under ``--data-root``, else Debian's
                  ``dataset-fashion-mnist`` package (/usr/share/datasets/fashion-mnist), else
                  torchvision's ``FashionMNIST/raw`` layout; ``--download`` through torchvision
                  (``bench.inputs.fashion_mnist``)
    folder:PATH   one subfolder per class (PATH/train and PATH/test if both exist); image modes as
                  ``bench.inputs.images`` reads them (palette to its grey or RGB values, alpha refused)
    npz:PATH      arrays x, y (or x_train, y_train, x_test, y_test)

uint8 images are scaled by 1/255 (digits by 1/16, its own range); float images outside [0, 1] are
refused rather than silently rescaled.  An npz with only x, y and a folder without train/ and test/
have no held-out split: their training and test sets are the same images (``Dataset.train_is_test``),
and the metrics that compare with the training set (FID, SSIM neighbours) refuse them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench.core.errors import BenchError
from bench.inputs import fashion_mnist

DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0
TRAIN_IS_TEST = ("the training and test sets are the same images (no separate test split), so this "
                 "comparison with the training set would compare with the evaluated images themselves")


@dataclass
class Split:
    x: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    y: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, n: int | None) -> Split:
        """The first n points (all when n is None or larger); evaluation sets are prefixes."""
        return self if n is None or n >= len(self) else Split(self.x[:n], self.y[:n])


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    num_classes: int
    classes: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])

    @property
    def train_is_test(self) -> bool:
        """True when training and test sets are the same images (npz with only x, y; folder without
        train/ and test/; or identical splits): metrics comparing with the training set refuse."""
        return bool(self.info.get("train_is_test")) or self.train is self.test


def split_sha256(split: Split) -> str:
    """sha256 of a split's images and labels as evaluated (float32 and int64 bytes, with shapes)."""
    h = hashlib.sha256()
    for t in (split.x, split.y):
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load(name: str, data_root: str | Path | None = None, download: bool = False) -> Dataset:
    """Load a data set by name (see module docstring)."""
    if name == "digits":
        return load_digits()
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, data_root, download)
    if name in ("cifar10-c", "cifar100-c"):
        from bench.inputs import corrupted

        return corrupted.load_cifar_c(name, data_root, lambda clean: load_cifar(clean, data_root, download))
    if name == "fashion-mnist":
        return load_fashion_mnist(data_root, download)
    if name.startswith("folder:"):
        return load_folder(Path(name[len("folder:"):]))
    if name.startswith("npz:"):
        return load_npz(Path(name[len("npz:"):]))
    raise BenchError(f"unknown dataset {name!r}; expected digits, fashion-mnist, cifar10, cifar100, cifar10-c, cifar100-c, "
                     "folder:PATH or npz:PATH")


def digits_split(y: np.ndarray | None = None, test_fraction=DIGITS_TEST_FRACTION, seed=DIGITS_SPLIT_SEED,
                 as_datasets: bool = False):
    """The digits split ``load("digits")`` evaluates on: (train, test) indices into scikit-learn's
    ``load_digits()`` (1347 and 450, sorted), to train without touching a test point; with
    ``as_datasets`` the two ``Split``s themselves.  Fixed and stratified: per class, a seeded
    permutation; the first share is test.  numpy's legacy RandomState keeps its stream across
    versions, so the split never moves.  ``y``: other labels to split the same way (default:
    load_digits' targets)."""
    if as_datasets:
        d = load_digits()
        return d.train, d.test
    if y is None:
        from sklearn.datasets import load_digits as sk_digits

        y = sk_digits().target
    rng = np.random.RandomState(seed)
    test = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        test.extend(idx[: int(round(len(idx) * test_fraction))])
    test = np.sort(np.array(test))
    train = np.setdiff1d(np.arange(len(y)), test)
    return train, test


def load_digits() -> Dataset:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    tr, te = digits_split(d.target)
    return Dataset("digits", Split(x[tr], y[tr]), Split(x[te], y[te]), 10,
                   [str(i) for i in range(10)], {"source": "sklearn.datasets.load_digits"})


CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]),
    "cifar100": ("cifar-100-python", ["train", "test", "meta"]),
}


def load_cifar(name: str, data_root, download: bool) -> Dataset:
    import torchvision

    base, files = CIFAR_FILES[name]
    root = Path(data_root or "data").expanduser()
    expected = [root / base / f for f in files]
    missing = [str(p) for p in expected if not p.is_file()]
    if missing and not download:
        raise BenchError(f"{name} not found under {root}: expected {', '.join(missing[:3])}"
                         f"{' ...' if len(missing) > 3 else ''} (pass --download where online)")
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100

    class _Present(cls):
        # torchvision refuses files whose md5 differs from the official release; with md5 None its
        # own checks test presence only, so any file in the CIFAR python format reads, and whether
        # it is the official release is recorded instead (official_md5).
        train_list = [[f, None] for f, _ in cls.train_list]
        test_list = [[f, None] for f, _ in cls.test_list]
        meta = {**cls.meta, "md5": None}

    try:
        if missing:
            cls(str(root), train=True, download=True)  # the real download, only when asked
        tr, te = _Present(str(root), train=True), _Present(str(root), train=False)
    except BenchError:
        raise
    except Exception as e:  # corrupt pickle, network failure: one line
        raise BenchError(f"cannot read {name} under {root}: {type(e).__name__}: {e}") from None
    official = all(_md5(Path(root) / base / f) == md5 for f, md5 in cls.train_list + cls.test_list)

    def split(ds):
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).float() / 255.0
        return Split(x, torch.tensor(ds.targets, dtype=torch.int64))

    return Dataset(name, split(tr), split(te), len(tr.classes), list(tr.classes),
                   {"root": str(root), "official_md5": official})


def load_fashion_mnist(data_root=None, download: bool = False) -> Dataset:
    (xtr, ytr, xte, yte), found = fashion_mnist.read_arrays(data_root, download)
    train = _split(xtr, ytr, f"{found}/train")
    test = _split(xte, yte, f"{found}/t10k")
    return Dataset("fashion-mnist", train, test, 10, list(fashion_mnist.FASHION_MNIST_CLASSES), {"root": str(found)})


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def load_npz(path: Path) -> Dataset:
    if not path.is_file():
        raise BenchError(f"npz data set not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise BenchError(f"cannot read npz data set {path}: {type(e).__name__}: {e}") from None
    if {"x_train", "y_train", "x_test", "y_test"} <= arrays.keys():
        train = _split(arrays["x_train"], arrays["y_train"], f"{path}:train")
        test = _split(arrays["x_test"], arrays["y_test"], f"{path}:test")
    elif {"x", "y"} <= arrays.keys():
        train = test = _split(arrays["x"], arrays["y"], str(path))
    else:
        raise BenchError(f"{path} needs arrays x, y (or x_train, y_train, x_test, y_test); found {sorted(arrays)}")
    ds = _dataset(f"npz:{path}", train, test)
    ds.info["train_is_test"] = train is test  # x, y only: no held-out split
    return ds


def load_folder(path: Path) -> Dataset:
    if not path.is_dir():
        raise BenchError(f"image folder not found: {path}")
    parts = [path / "train", path / "test"] if (path / "train").is_dir() and (path / "test").is_dir() else [path]
    splits = [_read_folder(p) for p in parts]
    classes = splits[0][2]
    if any(s[2] != classes for s in splits):
        raise BenchError(f"{path}: train and test have different class folders")
    train, test = Split(*splits[0][:2]), Split(*splits[-1][:2])
    ds = _dataset(f"folder:{path}", train, test, classes)
    ds.info["train_is_test"] = len(splits) == 1  # no train/ and test/: no held-out split
    return ds


def _read_folder(path: Path):
    from bench.inputs import images

    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    files, broken = [], 0
    for i, c in enumerate(classes):
        found, b = images.image_files(path / c)
        files += [(f, i) for f in found]
        broken += b
    images.warn_broken(path, broken)
    if not files:
        raise BenchError(f"{path}: no images in class subfolders")
    s = _split(images.read_images([f for f, _ in files], path), np.array([i for _, i in files]), str(path))
    return s.x, s.y, classes


def _split(x: np.ndarray, y: np.ndarray, where: str) -> Split:
    return Split(as_images(x, where), as_labels(y, len(x), where))


def as_images(x: np.ndarray | torch.Tensor, where: str = "images") -> torch.Tensor:
    """Any image array -> float32 (N, C, H, W) in [0, 1]; uint8 is scaled, floats must be in range."""
    x = np.asarray(x)
    if x.size == 0 or x.ndim < 3:
        raise BenchError(f"{where}: empty or not a batch of images (shape {x.shape})")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4:
        raise BenchError(f"{where}: expected images (N,H,W), (N,H,W,C) or (N,C,H,W), got shape {x.shape}")
    if x.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(x)).float() / 255.0
    if not np.issubdtype(x.dtype, np.floating):
        raise BenchError(f"{where}: images must be uint8 or float, got {x.dtype}")
    if not np.isfinite(x).all():
        raise BenchError(f"{where}: images contain NaN or inf")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise BenchError(f"{where}: float images must lie in [0, 1], found [{lo:.3g}, {hi:.3g}]"
                         " (scale them, or store uint8)")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def as_labels(y, n: int, where: str) -> torch.Tensor:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n or not np.issubdtype(y.dtype, np.integer) or (y < 0).any():
        raise BenchError(f"{where}: labels must be {n} non-negative integers, got shape {y.shape} {y.dtype}")
    return torch.from_numpy(y.astype(np.int64))


def _dataset(name: str, train: Split, test: Split, classes=None) -> Dataset:
    n = int(max(train.y.max(), test.y.max())) + 1
    if train.x.shape[1:] != test.x.shape[1:]:
        raise BenchError(f"{name}: train and test images differ in shape")
    return Dataset(name, train, test, len(classes) if classes else n, classes or [str(i) for i in range(n)])


class ClassGaussian:
    """The class-conditional Gaussian N(mu_y, Sigma_y) of the training images that SGLD starts
    from (paper Sec. 2.2).  Sigma_y = A_y^T A_y / (n_y - 1) with A_y the centred images of class y;
    sampling uses that factor, x = mu_y + A_y^T z / sqrt(n_y - 1) + sqrt(ridge) e, which is exact
    for N(mu_y, Sigma_y + ridge I) and never forms a D x D matrix (3072 x 3072 per CIFAR class)."""

    def __init__(self, split: Split, num_classes: int, ridge: float = 1e-4):
        x = split.x.flatten(1).double()
        self.shape = tuple(split.x.shape[1:])
        self.ridge = ridge
        self.mean, self.factors = [], []
        for c in range(num_classes):
            xc = x[split.y == c]
            if len(xc) < 2:
                raise BenchError(f"class {c} has {len(xc)} training images; need at least 2 for its covariance")
            mu = xc.mean(0)
            self.mean.append(mu.float())
            self.factors.append(((xc - mu) / (len(xc) - 1) ** 0.5).float())
        self.mean = torch.stack(self.mean)

    def covariance(self, c: int) -> torch.Tensor:
        a = self.factors[c].double()
        return (a.T @ a).float()

    def sample(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x ~ N(mu_y, Sigma_y) for each label in y, as images (not clamped), on CPU."""
        y = y.cpu()
        x = self.mean[y].clone()
        for c in y.unique().tolist():
            rows = (y == c).nonzero().squeeze(1)
            a = self.factors[c]
            z = torch.randn(len(rows), a.shape[0], generator=generator)
            x[rows] += z @ a
        x += self.ridge ** 0.5 * torch.randn(x.shape, generator=generator)
        return x.view(len(y), *self.shape)
