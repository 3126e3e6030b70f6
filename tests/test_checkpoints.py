import os
import pickle

import pytest
import torch

from bench.cli import main
from bench.core.energy import EnergyModel
from bench.core.errors import BenchError
from bench.inputs import checkpoints, nets
from tests.conftest import tiny_model

META = {"arch": "digits-cnn", "arch_kwargs": {"width": 4, "act": "silu"}, "num_classes": 10,
        "input_shape": [1, 8, 8], "dataset": "digits", "method": "normal"}


def test_round_trip_identical_logits(tmp_path, digits):
    m = tiny_model()
    sha = checkpoints.save(tmp_path / "m.safetensors", m, META, replay_buffer=torch.rand(5, 1, 8, 8))
    loaded = checkpoints.load(str(tmp_path / "m.safetensors"))
    x = digits.test.x[:16]
    assert torch.equal(loaded.model.logits(x), m.logits(x))
    assert loaded.sha256 == sha == checkpoints.sha256(tmp_path / "m.safetensors")
    assert loaded.meta["method"] == "normal" and loaded.meta["mean"] == [0.5]
    assert loaded.replay_buffer.shape == (5, 1, 8, 8)
    assert loaded.describe()["sha256"] == sha


def test_resnet18_state_dict_with_module_prefix(tmp_path):
    torch.manual_seed(0)
    net = nets.build("resnet18", 10, 3).eval()
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "r.pt")
    loaded = checkpoints.load(str(tmp_path / "r.pt"), arch="resnet18", num_classes=10, input_shape=(3, 32, 32))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model.logits(x), net(x))


def test_jem_checkpoint(tmp_path):
    torch.manual_seed(0)
    jem = nets.build("jem-wrn-10-2", 10, 3).eval()
    buf = torch.rand(7, 3, 32, 32) * 2 - 1
    torch.save({"model_state_dict": jem.state_dict(), "replay_buffer": buf}, tmp_path / "jem.pt")
    loaded = checkpoints.load(str(tmp_path / "jem.pt"), num_classes=10, input_shape=(3, 32, 32))
    assert loaded.meta["arch"] == "jem-wrn-10-2" and loaded.meta["method"] == "jem"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():  # JEM normalises to [-1, 1]: (x - 0.5) / 0.5
        assert torch.equal(loaded.model.logits(x), jem((x - 0.5) / 0.5))
    # JEM keeps its buffer in its normalised space [-1, 1]; the loader hands it over in [0, 1]
    assert torch.allclose(loaded.replay_buffer, (buf + 1) / 2, atol=1e-7)
    assert loaded.replay_buffer.min() >= 0 and loaded.replay_buffer.max() <= 1


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch /tmp/bench-pwned",))


def test_malicious_pickle_does_not_run(tmp_path):
    if os.path.exists("/tmp/bench-pwned"):
        os.remove("/tmp/bench-pwned")
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"state_dict": _Boom()}, f)
    with pytest.raises(BenchError, match="not a loadable checkpoint"):
        checkpoints.load(str(tmp_path / "evil.pt"), arch="resnet18", num_classes=10, input_shape=(3, 32, 32))
    assert not os.path.exists("/tmp/bench-pwned")


def _write_bad_files(tmp_path):
    m = tiny_model()
    checkpoints.save(tmp_path / "ok.safetensors", m, META)
    raw = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "text.pt").write_text("hello, not a checkpoint\n")
    sd = m.net.state_dict()
    torch.save({k: v for k, v in sd.items() if k != "fc.bias"} | {"extra.weight": torch.zeros(1)}, tmp_path / "keys.pt")
    torch.save(sd, tmp_path / "sd.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")


@pytest.mark.parametrize("args,message", [
    (["--model", "{d}/nope.safetensors"], "model file not found"),
    (["--model", "{d}/trunc.safetensors"], "not a readable safetensors checkpoint"),
    (["--model", "{d}/text.pt", "--dataset", "digits", "--arch", "digits-cnn"], "not a loadable checkpoint"),
    (["--model", "{d}/list.pt", "--dataset", "digits", "--arch", "digits-cnn"], "not a checkpoint"),
    (["--model", "{d}/sd.pt", "--dataset", "digits", "--arch", "vgg"], "unknown architecture 'vgg'"),
    (["--model", "{d}/sd.pt", "--dataset", "digits"], "needs --arch"),
    (["--model", "{d}/keys.pt", "--dataset", "digits", "--arch", "digits-cnn"], "missing keys fc.bias"),
    (["--model", "{d}/keys.pt", "--dataset", "digits", "--arch", "digits-cnn"], "unexpected keys extra.weight"),
    (["--model", "{d}/sd.pt", "--dataset", "digits", "--arch", "resnet18"], "does not match arch"),
    (["--model", "{d}/ok.safetensors", "--dataset", "npz:{d}/three.npz"], "has 10 classes but data set"),
    (["--model", "{d}/ok.safetensors", "--eps", "8"], "give e.g. 8/255, not 8"),
    (["--model", "{d}/ok.safetensors", "--eps", "-0.1"], "eps must be a non-negative number"),
    (["--model", "{d}/ok.safetensors", "--n-gen", "0"], "n-gen must be a positive integer"),
    (["--model", "{d}/ok.safetensors", "--suite", "robust,bogus"], "unknown suite 'bogus'"),
    (["--model", "{d}/ok.safetensors", "--dataset", "mnist"], "unknown dataset 'mnist'"),
])
def test_bad_input_one_line_exit_2(tmp_path, capsys, args, message):
    import numpy as np

    _write_bad_files(tmp_path)
    np.savez(tmp_path / "three.npz", x=np.zeros((6, 8, 8), np.uint8), y=np.arange(6) % 3)
    out = tmp_path / "out"
    code = main(["run", *[a.format(d=tmp_path) for a in args], "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert not (out / "results.json").exists()


def test_factory_and_shape_checks(tmp_path, capsys):
    # py: factories run only when named; a model that cannot take the data's shape is refused
    code = main(["run", "--model", "py:tests.test_checkpoints:rgb_model", "--dataset", "digits",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "does not accept digits images" in err, err


def rgb_model():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(10))


def test_energy_model_wraps_factory_module():
    loaded = checkpoints.load("py:tests.test_checkpoints:rgb_model", num_classes=10, input_shape=(3, 8, 8))
    assert isinstance(loaded.model, EnergyModel) and loaded.sha256 is None
