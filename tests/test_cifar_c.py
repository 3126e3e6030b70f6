"""The official CIFAR-10-C layout from disk (bench.inputs.corrupted): a tiny release written here."""

import numpy as np
import pytest
import torch

from bench.core.errors import BenchError
from bench.engines.corruptions import REGISTRY
from bench.inputs import corrupted, data
from tests.test_data import _write_cifar10


def _write_cifar10_c(root, labels, names=("fog", "jpeg_compression"), n=4):
    d = root / "CIFAR-10-C"
    d.mkdir(parents=True)
    rng = np.random.RandomState(1)
    arrays = {c: rng.randint(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8) for c in names}
    for c, a in arrays.items():
        np.save(d / f"{c}.npy", a)
    np.save(d / "labels.npy", np.tile(np.asarray(labels, dtype=np.uint8), 5))  # the release stores uint8
    return d, arrays


def test_the_engines_compute_the_releases_corruptions_in_its_order():
    assert tuple(REGISTRY) == corrupted.CORRUPTIONS and len(corrupted.CORRUPTIONS) == 15


def test_cifar10_c_reads_each_corruption_and_severity(tmp_path):
    _write_cifar10(tmp_path)
    clean = data.load("cifar10", tmp_path)
    _, arrays = _write_cifar10_c(tmp_path, clean.test.y.numpy())
    ds = data.load("cifar10-c", tmp_path)
    assert ds.name == "cifar10-c" and torch.equal(ds.test.x, clean.test.x) and torch.equal(ds.test.y, clean.test.y)
    c = ds.info["corrupted"]
    assert c.corruptions == ("fog", "jpeg_compression") and len(c) == 4
    for sev in (1, 3, 5):
        want = torch.from_numpy(arrays["fog"][(sev - 1) * 4:sev * 4].astype(np.float32)).permute(0, 3, 1, 2) / 255
        assert torch.equal(c.images("fog", sev), want)
    assert c.images("jpeg_compression", 2, n=3).shape == (3, 3, 32, 32)
    with pytest.raises(BenchError, match=r"no snow.npy \(present: fog, jpeg_compression\)"):
        c.images("snow", 1)
    with pytest.raises(BenchError, match="severity must be an integer from 1 to 5"):
        c.images("fog", 6)


def test_missing_files_are_one_line_naming_them(tmp_path):
    with pytest.raises(BenchError) as e:
        data.load("cifar10-c", tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and f"{tmp_path}/CIFAR-10-C/labels.npy" in msg and "gaussian_noise" in msg
    with pytest.raises(BenchError, match="CIFAR-100-C/labels.npy"):
        data.load("cifar100-c", tmp_path)


def test_clean_set_missing_or_labels_not_the_test_labels(tmp_path):
    _write_cifar10_c(tmp_path / "a", [1, 2, 3, 4])
    with pytest.raises(BenchError, match="cifar10-c needs the clean cifar10 beside .*cifar-10-batches-py"):
        data.load("cifar10-c", tmp_path / "a")
    _write_cifar10(tmp_path / "b")
    _write_cifar10_c(tmp_path / "b", (data.load("cifar10", tmp_path / "b").test.y.numpy() + 1) % 10)
    with pytest.raises(BenchError, match="labels.npy are not the first 4 labels of cifar10's test set"):
        data.load("cifar10-c", tmp_path / "b")


def test_a_file_not_in_the_release_layout_is_refused(tmp_path):
    d, _ = _write_cifar10_c(tmp_path, [0, 1, 2, 3])
    np.save(d / "fog.npy", np.zeros((20, 32, 32), dtype=np.uint8))
    with pytest.raises(BenchError, match=r"fog.npy: expected uint8 \(20, H, W, 3\)"):
        corrupted.read_corrupted(d)
    np.save(d / "labels.npy", np.arange(20, dtype=np.uint8))
    with pytest.raises(BenchError, match="the five severities' labels differ"):
        corrupted.read_corrupted(d)


def test_the_corrupted_sets_take_their_clean_sets_defaults():
    """eps, n_gen and the L2 radius of cifar10-c are CIFAR-10's (they fell to the digits' before)."""
    from bench.core.settings import dataset_defaults

    for norm in ("Linf", "L2"):
        assert dataset_defaults("cifar10-c", norm) == dataset_defaults("cifar10", norm)
        assert dataset_defaults("cifar100-c", norm) == dataset_defaults("cifar100", norm)
