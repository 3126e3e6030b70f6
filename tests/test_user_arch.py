"""A user's own architecture and factories (issue 26, item 3): ``--arch py:module:Class`` builds
it for a plain ``.pt``; ``py:`` specs resolve from the current directory, else say to set PYTHONPATH."""

import sys

import pytest
import torch
from torch import nn

from bench.cli import main
from bench.core.errors import BenchError
from bench.inputs import checkpoints


class SmallNet(nn.Module):
    """A user's architecture for 8x8 grey digits."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, num_classes))

    def forward(self, x):
        return self.body(x)


@pytest.fixture
def clean_path(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    sys.modules.pop("my_cwd_models", None)


def test_arch_py_class_builds_a_users_architecture_for_a_plain_pt(tmp_path):
    torch.manual_seed(0)
    net = SmallNet()
    pt = tmp_path / "mine.pt"
    torch.save(net.state_dict(), pt)
    loaded = checkpoints.load(str(pt), arch="py:tests.test_user_arch:SmallNet", num_classes=10, input_shape=(1, 8, 8))
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(loaded.model.logits(x), net(x))
    assert loaded.meta["arch"] == "py:tests.test_user_arch:SmallNet"
    with pytest.raises(BenchError, match="cannot import"):
        checkpoints.load(str(pt), arch="py:tests.test_user_arch:NoSuchClass", num_classes=10, input_shape=(1, 8, 8))


def test_py_specs_resolve_from_the_current_directory(tmp_path, monkeypatch, clean_path, capsys):
    (tmp_path / "my_cwd_models.py").write_text(
        "import torch\n\ndef make():\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))\n")
    monkeypatch.chdir(tmp_path)
    sys.path[:] = [p for p in sys.path if p not in ("", str(tmp_path))]
    loaded = checkpoints.load("py:my_cwd_models:make", num_classes=10, input_shape=(1, 8, 8))
    assert loaded.model.logits(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_a_py_module_nowhere_says_to_set_pythonpath(tmp_path, monkeypatch, clean_path, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["run", "--model", "py:no_such_user_module:make", "--dataset", "digits", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "PYTHONPATH" in err and len(err.strip().splitlines()) == 1, err
