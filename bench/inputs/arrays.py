"""Data given in memory (``bench.evaluate(model, data=...)``) as a ``bench.inputs.data.Dataset``.

Accepted forms (torch tensors or numpy arrays, images in [0, 1] or uint8, integer labels):

    (x, y)                                  the evaluated points; no training split
    ((x_train, y_train), (x_test, y_test))  a training split and the evaluated points
    a torch ``Dataset`` yielding (image, label), or (train Dataset, test Dataset)

Images are (N, C, H, W), (N, H, W) for grey, or (N, H, W, C); they pass the one image check of
``bench.inputs.data.as_images`` (uint8 scaled by 1/255, floats refused outside [0, 1]) and the
labels ``as_labels``: each fault is one ``BenchError`` line.  The data set is named ``arrays``;
its identity in results.json is the sha256 of the images and labels as evaluated
(``run.data.train_sha256``/``test_sha256``, as for an npz file), so two runs on the same arrays
share their cache and ``bench check`` knows when the points differ.

With (x, y) alone there is no training split: as for an npz holding only x and y, the training
split is the evaluated points themselves (``Dataset.train_is_test``), SGLD starts from their
class Gaussian, and the metrics that compare with the training set (FID, KID, precision/recall,
the judged scores, SSIM neighbours, the memorization suite's temperature fit) are null with the
reason ``refused: the training and test sets are the same images ...``; give
``((x_train, y_train), (x_test, y_test))`` for them.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from bench.core.errors import BenchError
from bench.inputs.data import Dataset, Split, as_images, as_labels

NAME = "arrays"
FORMS = "(x, y), ((x_train, y_train), (x_test, y_test)), a torch Dataset of (image, label) or a pair of them"


def is_arrays(data) -> bool:
    """Whether ``data`` is one of the in-memory forms (not a data set's name, not a bench Dataset)."""
    return isinstance(data, tuple | list | torch.utils.data.Dataset)


def dataset(data) -> Dataset:
    """``data`` (see the module docstring) -> a ``Dataset`` named ``arrays``, of the largest label
    + 1 classes (``with_num_classes`` sets the model's)."""
    if isinstance(data, torch.utils.data.Dataset):
        train = test = _split(data, "data")
    elif isinstance(data, tuple | list) and len(data) == 2 and all(_is_pair(p) for p in data):
        train, test = _split(data[0], "data[0] (train)"), _split(data[1], "data[1] (test)")
    elif isinstance(data, tuple | list) and len(data) == 2:
        train = test = _split(data, "data")
    else:
        raise BenchError(f"data: expected {FORMS}; got a {type(data).__name__}"
                         + (f" of {len(data)} items" if isinstance(data, tuple | list) else ""))
    if train.x.shape[1:] != test.x.shape[1:]:
        raise BenchError(f"data: training images are {tuple(train.x.shape[1:])} but test images "
                         f"{tuple(test.x.shape[1:])}")
    n = int(max(train.y.max(), test.y.max())) + 1
    info = {"source": "arrays in memory", "train_is_test": train is test}
    return Dataset(NAME, train, test, n, [str(i) for i in range(n)], info)


def _is_pair(p) -> bool:
    """A split of its own: a torch Dataset, or an (x, y) pair whose x is a batch of images."""
    if isinstance(p, torch.utils.data.Dataset):
        return True
    return isinstance(p, tuple | list) and len(p) == 2 and np.ndim(_array(p[0], "x")) >= 3


def _split(part, where: str) -> Split:
    if isinstance(part, torch.utils.data.Dataset):
        return _from_dataset(part, where)
    if not (isinstance(part, tuple | list) and len(part) == 2):
        raise BenchError(f"{where}: expected an (x, y) pair or a torch Dataset, got a {type(part).__name__}")
    x, y = _array(part[0], f"{where} x"), _array(part[1], f"{where} y")
    return Split(as_images(x, f"{where} x"), as_labels(y, len(x), f"{where} y"))


def _array(v, where: str) -> np.ndarray:
    """A tensor (any device, with or without grad) or anything numpy reads, as a numpy array."""
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        return v.numpy() if v.dtype != torch.bfloat16 else v.float().numpy()
    try:
        return np.asarray(v)
    except (TypeError, ValueError) as e:
        raise BenchError(f"{where}: not an array ({type(v).__name__}: {e})") from None


def _from_dataset(ds, where: str) -> Split:
    """Every item of a torch Dataset, in order: (image, label) with a tensor, array or PIL image."""
    try:
        n = len(ds)
    except TypeError:
        raise BenchError(f"{where}: a torch Dataset without len() (an IterableDataset); give (x, y) arrays") from None
    if n == 0:
        raise BenchError(f"{where}: the Dataset is empty")
    xs, ys = [], []
    for i in range(n):
        item = ds[i]
        if not (isinstance(item, tuple | list) and len(item) >= 2):
            raise BenchError(f"{where}: item {i} is a {type(item).__name__}, expected (image, label)")
        xs.append(_array(item[0], f"{where} item {i} image"))
        ys.append(_array(item[1], f"{where} item {i} label"))
    shapes = {a.shape for a in xs}
    if len(shapes) > 1:
        raise BenchError(f"{where}: images of different shapes {sorted(shapes)[:2]}")
    x, y = np.stack(xs), np.stack(ys).reshape(-1) if all(v.size == 1 for v in ys) else np.stack(ys)
    hint = " (a transforms.Normalize in the Dataset? give the normalisation as normalize= or mean=/std= instead)"
    try:
        images = as_images(x, f"{where} images")
    except BenchError as e:
        raise BenchError(str(e) + (hint if "must lie in [0, 1]" in str(e) else "")) from None
    return Split(images, as_labels(y, len(x), f"{where} labels"))


def with_num_classes(ds: Dataset, num_classes: int | None) -> Dataset:
    """``ds`` with the model's number of outputs as its number of classes (labels must lie below
    it; None: ``ds`` as it is, the largest label + 1)."""
    if num_classes is None:
        return ds
    top = int(max(ds.train.y.max(), ds.test.y.max()))
    if top >= num_classes:
        raise BenchError(f"data: label {top} but the model has {num_classes} outputs (labels 0..{num_classes - 1})")
    return replace(ds, num_classes=num_classes, classes=[str(i) for i in range(num_classes)])
