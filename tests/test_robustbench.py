"""``--model rb:NAME`` (bench/inputs/rb_zoo.py): robustbench imported through the bridge to
pyautoattack, and a model read from a folder in RobustBench's layout with no network."""

import hashlib
import importlib.util
import os
import socket
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import bench
from bench import cli
from bench.core.errors import BenchError
from bench.inputs import checkpoints, rb_zoo

HAS_RB = importlib.util.find_spec("robustbench") is not None
needs_rb = pytest.mark.skipif(not HAS_RB, reason="robustbench is not installed (pip install 'jeat-bench[robustbench]')")
REAL_AUTOATTACK = importlib.util.find_spec("autoattack") is not None


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails at once: what a machine with no network does."""

    def refuse(self, *a, **k):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.fixture(scope="module")
def rb_dir(tmp_path_factory):
    """DIR/cifar10/Linf/Standard.pt: RobustBench's ``Standard`` WRN-28-10 with random weights, saved
    as a dict holding the state dict with ``module.`` prefixes (as Carmon2019Unlabeled's file is);
    -> (DIR, the file, the weights as written)."""
    import pyautoattack
    import pyautoattack.state

    with pytest.MonkeyPatch.context() as mp:  # robustbench's own import, with its own alias (not the bridge)
        mp.setitem(sys.modules, "autoattack", pyautoattack)
        mp.setitem(sys.modules, "autoattack.state", pyautoattack.state)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from robustbench.model_zoo.architectures.wide_resnet import WideResNet

    torch.manual_seed(0)
    net = WideResNet(depth=28, widen_factor=10)
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    root = tmp_path_factory.mktemp("rb-models")
    path = root / "cifar10" / "Linf" / "Standard.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in weights.items()}}, path)
    return root, path, weights


@pytest.mark.skipif(REAL_AUTOATTACK, reason="a module named autoattack is installed: the bridge adds nothing")
def test_bridge_names_pyautoattack_autoattack_only_while_open():
    import pyautoattack
    import pyautoattack.state

    assert "autoattack" not in sys.modules
    with rb_zoo.autoattack_bridge():
        from autoattack import AutoAttack
        from autoattack.state import EvaluationState

        assert sys.modules["autoattack"] is pyautoattack
        assert AutoAttack is pyautoattack.AutoAttack and EvaluationState is pyautoattack.state.EvaluationState
    assert "autoattack" not in sys.modules and "autoattack.state" not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        import autoattack  # noqa: F401


def test_bridge_leaves_an_existing_autoattack_alone(monkeypatch):
    real = types.ModuleType("autoattack")
    monkeypatch.setitem(sys.modules, "autoattack", real)
    monkeypatch.delitem(sys.modules, "autoattack.state", raising=False)
    with rb_zoo.autoattack_bridge():
        assert sys.modules["autoattack"] is real and "autoattack.state" not in sys.modules
    assert sys.modules["autoattack"] is real and "autoattack.state" not in sys.modules


@needs_rb
@pytest.mark.skipif(REAL_AUTOATTACK, reason="a module named autoattack is installed: the bridge adds nothing")
def test_robustbench_imports_through_the_bridge_in_a_fresh_interpreter():
    code = ("import sys; from bench.inputs import rb_zoo; load_model, zoo, D, T = rb_zoo.robustbench(); "
            "import pyautoattack, robustbench.eval; "
            "assert 'autoattack' not in sys.modules and 'autoattack.state' not in sys.modules; "
            "assert robustbench.eval.AutoAttack is pyautoattack.AutoAttack; "
            "assert robustbench.eval.EvaluationState is pyautoattack.state.EvaluationState; "
            "print(load_model.__module__, 'Standard' in zoo[D.cifar_10][T.Linf])")
    env = dict(os.environ, PYTHONPATH=str(Path(bench.__file__).parents[1]), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["robustbench.utils", "True"]


def test_without_robustbench_the_error_names_the_extra(monkeypatch):
    for name in [m for m in sys.modules if m == "robustbench" or m.startswith("robustbench.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "robustbench", None)  # import robustbench raises ImportError
    with pytest.raises(BenchError, match=r"^rb:Standard needs the robustbench extra \(pip install 'jeat-bench\[robustbench\]'\)"):
        checkpoints.load("rb:Standard", num_classes=10, input_shape=(3, 32, 32))


@needs_rb
def test_rb_standard_from_the_folder_equals_robustbench_with_no_network(rb_dir, no_network):
    # robustbench's own load_model, imported by the fixture with its own alias (not the bridge)
    from robustbench.utils import load_model

    root, path, weights = rb_dir
    loaded = checkpoints.load("rb:Standard", num_classes=10, input_shape=(3, 32, 32), rb_model_dir=root)
    assert "autoattack" not in sys.modules or REAL_AUTOATTACK  # the bridge took its names away
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.meta["arch"] == "rb:Standard" and loaded.meta["source_format"] == "robustbench"
    state = loaded.model.net.state_dict()
    assert state.keys() == weights.keys() and all(torch.equal(state[k], weights[k]) for k in weights)
    reference = load_model(model_name="Standard", model_dir=str(root), dataset="cifar10", threat_model="Linf")
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = loaded.model.logits(x), reference(x)
    assert ours.shape == (3, 10) and torch.equal(ours, theirs)


@needs_rb
@pytest.mark.slow  # WRN-28-10 on CPU: about 10 s of one core for the whole calibration suite on 2 images
def test_bench_run_rb_standard_with_rb_model_dir_offline(rb_dir, no_network, tmp_path, capsys, use_groups):
    import json

    from bench.metrics import load_all

    # the calibration suite's clean group alone: WRN-28-10 on the CPU (the plan's probe, 16 WRN
    # passes, is untimed here as in every test not marked timed_plan: tests/conftest.py)
    use_groups({"ece": load_all()["ece"]})
    root, path, _ = rb_dir
    rng = np.random.RandomState(0)
    data = tmp_path / "cifar-shaped.npz"  # CIFAR-shaped images, 10 classes: the cifar10 zoo
    np.savez(data, x_train=rng.randint(0, 256, (10, 32, 32, 3)).astype(np.uint8), y_train=np.arange(10),
             x_test=rng.randint(0, 256, (2, 32, 32, 3)).astype(np.uint8), y_test=np.arange(2))
    out = tmp_path / "run"
    code = cli.main(["run", "--model", "rb:Standard", "--rb-model-dir", str(root), "--dataset", f"npz:{data}",
                     "--suite", "calibration", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    doc = json.loads((out / "results.json").read_text())
    assert doc["model"]["path"] == "rb:Standard" and doc["model"]["arch"] == "rb:Standard"
    assert doc["model"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert doc["metrics"]["ece"]["value"] is not None and doc["metrics"]["ece"]["n"] == 2


@needs_rb
def test_a_missing_file_with_no_network_is_one_line(tmp_path, no_network):
    with pytest.raises(BenchError) as e:
        checkpoints.load("rb:Carmon2019Unlabeled", num_classes=10, input_shape=(3, 32, 32), rb_model_dir=tmp_path)
    msg = str(e.value)
    expected = tmp_path / "cifar10" / "Linf" / "Carmon2019Unlabeled.pt"
    assert msg.startswith(f"cannot load RobustBench model rb:Carmon2019Unlabeled: {expected} is missing and its "
                          "download failed: ") and "\n" not in msg
    assert not expected.exists()


@needs_rb
def test_a_name_not_in_the_zoo_is_one_line(tmp_path):
    with pytest.raises(BenchError, match=r"^rb:Standrd is not in RobustBench's cifar10 Linf zoo; did you mean rb:Standard\?$"):
        checkpoints.load("rb:Standrd", num_classes=10, input_shape=(3, 32, 32), rb_model_dir=tmp_path)
    with pytest.raises(BenchError, match=r"have 10 \(cifar10\), 100 \(cifar100\) or 1000 \(imagenet\) classes; the data set has 7$"):
        checkpoints.load("rb:Standard", num_classes=7, input_shape=(3, 32, 32), rb_model_dir=tmp_path)


def test_rb_model_dir_without_an_rb_model_is_refused(tmp_path, capsys):
    assert cli.main(["run", "--rb-model-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == ("error: --rb-model-dir is the folder of rb:NAME models; "
                                               "no --model rb:NAME was given")
