"""Fashion-MNIST: the IDX reader against hand-written files, the search order, the one-line error,
and the real data set (Debian's dataset-fashion-mnist; in CI it must be there, elsewhere the test
says why it skips)."""

import gzip
import struct

import numpy as np
import pytest

from bench.cli import main
from bench.core.errors import BenchError
from bench.inputs import data, fashion_mnist
from tests.conftest import fashion_mnist_or_skip


def _write_idx(path, arr: np.ndarray, gz: bool) -> None:
    head = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw = head + arr.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)


def _fake_set(folder, gz=True, n_train=6, n_test=4):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    arrays = {"train-images-idx3-ubyte": rng.randint(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": np.arange(n_train) % 10,
              "t10k-images-idx3-ubyte": rng.randint(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": (np.arange(n_test) + 3) % 10}
    for stem, a in arrays.items():
        _write_idx(folder / stem, a, gz)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_read_exactly(tmp_path, gz):
    arrays = _fake_set(tmp_path, gz=gz)
    ds = data.load("fashion-mnist", data_root=tmp_path)
    assert ds.name == "fashion-mnist" and ds.num_classes == 10 and ds.input_shape == (1, 28, 28)
    np.testing.assert_array_equal(ds.train.x[:, 0].numpy() * 255, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.test.y.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"


def test_torchvision_raw_layout_under_data_root(tmp_path):
    _fake_set(tmp_path / "FashionMNIST" / "raw", gz=False, n_train=5)
    assert len(data.load("fashion-mnist", data_root=tmp_path).train) == 5


def test_truncated_idx_is_one_error_line(tmp_path):
    _fake_set(tmp_path, gz=False)
    p = tmp_path / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(BenchError, match="truncated"):
        data.load("fashion-mnist", data_root=tmp_path)


def test_absent_names_the_package(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_DEBIAN", tmp_path / "none")
    monkeypatch.chdir(tmp_path)
    code = main(["run", "--dataset", "fashion-mnist", "--data-root", str(tmp_path / "empty"),
                 "--model", "digits-jeat", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "apt-get install dataset-fashion-mnist" in err[0] and "--data-root" in err[0]


def _real_or_skip():
    fashion_mnist_or_skip()
    return data.load("fashion-mnist")


def test_real_fashion_mnist_official_split():
    ds = _real_or_skip()
    assert (len(ds.train), len(ds.test)) == (60000, 10000)
    # the official release: 6,000 training and 1,000 test images per class; first labels 9, 0, 0, 3
    assert np.bincount(ds.train.y.numpy()).tolist() == [6000] * 10
    assert np.bincount(ds.test.y.numpy()).tolist() == [1000] * 10
    assert ds.train.y[:4].tolist() == [9, 0, 0, 3] and ds.test.y[:4].tolist() == [9, 2, 1, 1]
    assert float(ds.train.x.min()) == 0.0 and float(ds.train.x.max()) == 1.0


def test_released_name_resolves(tmp_path):
    from bench.inputs import zoo

    assert zoo.resolve_spec("digits-at").endswith("models/digits/digits-at.safetensors")
    assert zoo.resolve_spec("other.pt") == "other.pt"
    assert zoo.resolve_spec("fmnist-bogus") == "fmnist-bogus"  # not a method: left to the loader
    # a name listed in the manifest (the leaky-ReLU models) resolves through it
    assert zoo.resolve_spec("fmnist-jeat-lrelu").endswith("models/fmnist/fmnist-jeat-lrelu.safetensors")
    with pytest.raises(BenchError, match="no released fmnist checkpoint"):
        zoo.released_path("bogus", "fmnist")


def test_released_fmnist_files_match_their_manifest():
    """Twelve files (six methods, SiLU and leaky ReLU), each under 5 MB, its sha256 and activation
    as the manifest says."""
    from bench.inputs import checkpoints, zoo
    from bench.train.recipe import METHODS

    man = zoo.manifest("fmnist")["models"]
    assert set(man) == {f"fmnist-{m}{v}" for m in METHODS for v in ("", "-lrelu")}
    for name, e in man.items():
        path = zoo.models_dir() / "fmnist" / e["file"]
        assert path.stat().st_size < 5_000_000 and checkpoints.sha256(path) == e["sha256"], name
        meta = checkpoints.load(str(path)).meta
        assert meta["recipe"] == name and meta["method"] == e["method"]
        assert meta["arch_kwargs"].get("act", "silu") == ("leaky_relu" if name.endswith("-lrelu") else "silu")


def test_keep_buffer_trims_only_the_replay_buffer(tmp_path):
    """The release tool's buffer trim: the first N samples stay, every other tensor and the
    metadata are unchanged."""
    import shutil

    from safetensors.torch import load_file

    from bench.inputs import checkpoints, zoo
    from bench.train.release import keep_buffer

    src = zoo.released_path("jem", "digits")
    path = tmp_path / "jem.safetensors"
    shutil.copyfile(src, path)
    before = load_file(str(src))
    assert keep_buffer(path, 7) == f"first 7 of {len(before['replay_buffer'])} samples kept"
    after = load_file(str(path))
    assert after.keys() == before.keys()
    assert after["replay_buffer"].equal(before["replay_buffer"][:7])
    assert all(after[k].equal(before[k]) for k in before if k != "replay_buffer")
    assert checkpoints.load(str(path)).meta == checkpoints.load(str(src)).meta
    assert keep_buffer(path, 100) == "first 7 of 7 samples kept"  # asking for more keeps all
