import hashlib
import pickle

import numpy as np
import pytest
import torch

from bench.core.errors import BenchError
from bench.inputs import data


def test_digits_split_is_fixed(digits):
    assert len(digits.train) == 1347 and len(digits.test) == 450
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    assert float(digits.train.x.min()) == 0.0 and float(digits.train.x.max()) == 1.0
    # stratified: every class has 25% (rounded) of its images in test
    assert digits.test.y.bincount().tolist() == [44, 46, 44, 46, 45, 46, 45, 45, 44, 45]
    # the split never moves: pinned by the hash of the test indices
    from sklearn.datasets import load_digits

    _, test = data.digits_split(load_digits().target)
    assert hashlib.sha256(test.astype(np.int64).tobytes()).hexdigest()[:16] == DIGITS_TEST_SHA


DIGITS_TEST_SHA = "78d5b4207a8505a6"  # recorded once; a change means the split moved


def test_digits_split_is_exposed_and_is_what_load_uses(digits):
    """``bench.inputs.data.digits_split()``: the indices into sklearn's load_digits of the split
    ``data.load("digits")`` evaluates on, so a user can train without touching a test point."""
    from sklearn.datasets import load_digits

    train, test = data.digits_split()
    assert len(train) == 1347 and len(test) == 450 and not set(train) & set(test)
    assert sorted([*train, *test]) == list(range(1797))
    sk = load_digits()
    assert torch.equal(digits.train.x[:, 0] * 16, torch.tensor(sk.images[train], dtype=torch.float32))
    assert torch.equal(digits.test.x[:, 0] * 16, torch.tensor(sk.images[test], dtype=torch.float32))
    assert digits.test.y.tolist() == sk.target[test].tolist()
    ds = data.digits_split(as_datasets=True)  # the split itself, as bench evaluates it
    assert torch.equal(ds[0].x, digits.train.x) and torch.equal(ds[1].y, digits.test.y)


def _write_cifar10(root, n=4):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.randint(0, 256, (n, 3072), dtype=np.uint8), "labels": list(rng.randint(0, 10, n)),
                 "batch_label": name, "filenames": [f"{name}_{i}.png" for i in range(n)]}
        with open(d / name, "wb") as f:
            pickle.dump(batch, f)
    meta = {"label_names": [f"c{i}" for i in range(10)]}
    with open(d / "batches.meta", "wb") as f:
        pickle.dump(meta, f)
    return d


def test_cifar_loader_reads_python_format(tmp_path):
    d = _write_cifar10(tmp_path)
    ds = data.load("cifar10", tmp_path)
    assert len(ds.train) == 20 and len(ds.test) == 4 and ds.input_shape == (3, 32, 32)
    assert ds.num_classes == 10 and ds.classes[3] == "c3"
    assert ds.info["official_md5"] is False  # a tiny file, not the release
    with open(d / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    first = torch.tensor(raw["data"][0].reshape(3, 32, 32), dtype=torch.float32) / 255
    assert torch.equal(ds.test.x[0], first) and ds.test.y[0] == raw["labels"][0]


def test_cifar_missing_names_expected_files(tmp_path):
    with pytest.raises(BenchError, match="cifar-10-batches-py/data_batch_1"):
        data.load("cifar10", tmp_path)


def test_npz_and_range_checks(tmp_path):
    x = np.random.RandomState(0).randint(0, 256, (6, 5, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "ok.npz", x=x, y=np.arange(6) % 2)
    ds = data.load(f"npz:{tmp_path / 'ok.npz'}")
    assert ds.input_shape == (3, 5, 5) and ds.num_classes == 2
    torch.testing.assert_close(ds.train.x[1, :, 2, 3], torch.tensor(x[1, 2, 3] / 255, dtype=torch.float32))
    np.savez(tmp_path / "bad.npz", x=np.full((2, 4, 4), 3.0), y=np.zeros(2, dtype=int))
    with pytest.raises(BenchError, match=r"float images must lie in \[0, 1\]"):
        data.load(f"npz:{tmp_path / 'bad.npz'}")
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 4, 4)), y=np.zeros(0, dtype=int))
    with pytest.raises(BenchError, match="empty"):
        data.load(f"npz:{tmp_path / 'empty.npz'}")


def test_folder(tmp_path):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.fromarray(np.full((4, 4, 3), 60 * i, dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    ds = data.load(f"folder:{tmp_path}")
    assert ds.classes == ["a", "b"] and len(ds.train) == 4 and ds.train.y.tolist() == [0, 0, 1, 1]


def test_class_gaussian_moments(digits):
    g = data.ClassGaussian(digits.train, 10)
    x3 = digits.train.x[digits.train.y == 3].flatten(1)
    torch.testing.assert_close(g.mean[3], x3.mean(0))
    torch.testing.assert_close(g.covariance(3), torch.cov(x3.T), atol=1e-5, rtol=1e-4)
    s = g.sample(torch.full((4000,), 3), torch.Generator().manual_seed(0)).flatten(1)
    assert (s.mean(0) - g.mean[3]).abs().max() < 0.03
