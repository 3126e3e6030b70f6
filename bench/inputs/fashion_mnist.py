"""Fashion-MNIST's files: the official IDX files (gzipped or not) under ``--data-root``, else
Debian's ``dataset-fashion-mnist`` package (/usr/share/datasets/fashion-mnist), else torchvision's
``FashionMNIST/raw`` layout; ``--download`` through torchvision.  ``read_arrays`` gives the uint8
arrays of both splits; ``bench.inputs.data.load("fashion-mnist")`` makes them a data set."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.core.errors import BenchError

FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]


def fashion_mnist_dirs(data_root) -> list[Path]:
    """Where the Fashion-MNIST IDX files are looked for, in order."""
    dirs = []
    if data_root:
        root = Path(data_root).expanduser()
        dirs += [root, root / "FashionMNIST" / "raw"]
    dirs.append(FASHION_MNIST_DEBIAN)
    dirs.append(Path("data") / "FashionMNIST" / "raw")  # torchvision's layout under its default root
    return dirs


def idx_file(folder: Path, stem: str) -> Path | None:
    for p in (folder / stem, folder / f"{stem}.gz"):
        if p.is_file():
            return p
    return None


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not; unsigned-byte data, as MNIST and Fashion-MNIST use)."""
    import gzip

    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise BenchError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise BenchError(f"{path}: IDX header says {tuple(dims)} but holds {body.size} values (truncated?)")
    return body.reshape(tuple(dims)).copy()  # writable, independent of the file buffer


def read_arrays(data_root=None, download: bool = False) -> tuple[list[np.ndarray], Path]:
    """([train images, train labels, test images, test labels] as uint8 arrays, their folder)."""
    dirs = fashion_mnist_dirs(data_root)
    found = next((d for d in dirs if all(idx_file(d, f) for f in FASHION_MNIST_FILES)), None)
    if found is None and download:
        import torchvision

        root = Path(data_root or "data").expanduser()
        try:
            torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
            torchvision.datasets.FashionMNIST(str(root), train=False, download=True)
        except Exception as e:
            raise BenchError(f"cannot download fashion-mnist to {root}: {type(e).__name__}: {e}") from None
        found = root / "FashionMNIST" / "raw"
    if found is None:
        raise BenchError("fashion-mnist not found: install it (apt-get install dataset-fashion-mnist) or give "
                         "--data-root DIR holding " + ", ".join(f"{f}[.gz]" for f in FASHION_MNIST_FILES[:2])
                         + ", ... (or DIR/FashionMNIST/raw/; --download where online)")
    return [read_idx(idx_file(found, f)) for f in FASHION_MNIST_FILES], found
