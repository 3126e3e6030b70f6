"""Trust in what a run evaluates: the cache is keyed by the weights, code and data actually used;
the normalisation of foreign models is explicit; data without a test split is flagged and the
comparisons with the training set refused; metrics never change the model's mode."""

import importlib
import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

from bench import cli, metrics
from bench.core.energy import EnergyModel
from bench.core.errors import BenchError
from bench.core.settings import DEFAULTS
from bench.inputs import checkpoints, data, nets
from bench.metrics import Context, Group, Result
from bench.pipeline import runner
from tests.conftest import tiny_model
from tests.test_data import _write_cifar10

META = {"arch": "digits-cnn", "arch_kwargs": {"width": 4, "act": "silu"}, "num_classes": 10,
        "input_shape": [1, 8, 8], "dataset": "digits", "method": "normal",
        "threat_model": {"norm": "Linf", "eps": 0.1}}
QUIET = {"log": lambda m: None}
FACTORY = {"seed": 0}


def factory():
    """``py:tests.test_trust_inputs:factory``: the same factory, weights set by FACTORY['seed']."""
    return tiny_model(seed=FACTORY["seed"])


@pytest.fixture
def only(monkeypatch):
    """Run only the given groups (real or fake): only('ece') or only(Group(...))."""
    def use(*groups):
        real = metrics.load_all()
        chosen = {g if isinstance(g, str) else g.name: real[g] if isinstance(g, str) else g for g in groups}
        monkeypatch.setattr("bench.metrics.registry.load_all", lambda: chosen)
    return use


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "m.safetensors"
    checkpoints.save(path, tiny_model(), META)
    return str(path)


def _fresh(tmp_path, name, **kw):
    """The same run with no cache at all: the independent value a cached run must equal."""
    return runner.run(out=tmp_path / name, resume=False, **kw, **QUIET)


# ---------------------------------------------------------------------------------------------
# 2. the cache is keyed by the weights, the code and the data actually evaluated


def test_cache_weights_changed_py_factory(tmp_path, only, monkeypatch, one_thread):
    only("ece")
    kw = dict(model="py:tests.test_trust_inputs:factory", suite="calibration", dataset="digits",
              settings={"n_eval": 200})
    monkeypatch.setitem(FACTORY, "seed", 0)
    r1 = runner.run(out=tmp_path / "run", **kw, **QUIET)
    monkeypatch.setitem(FACTORY, "seed", 1)  # same factory, other weights
    r2 = runner.run(out=tmp_path / "run", **kw, **QUIET)
    fresh = _fresh(tmp_path, "fresh", **kw)
    assert fresh.metrics["ece"].value != r1.metrics["ece"].value  # the test can tell the two apart
    assert r2.run["cache"]["computed"] == ["ece"]  # before: a cache hit, the old model's ECE
    assert r2.metrics["ece"].value == fresh.metrics["ece"].value
    assert r2.model["weights_sha256"] != r1.model["weights_sha256"]
    assert r2.model["weights_sha256"] == fresh.model["weights_sha256"]
    r3 = runner.run(out=tmp_path / "run", **kw, **QUIET)  # unchanged: the cache still works
    assert r3.run["cache"]["hits"] == ["ece"]


def test_cache_code_changed(tmp_path, ckpt, only, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.syspath_prepend(str(tmp_path))
    src = tmp_path / "trust_code_group.py"
    body = "from bench.metrics import Result\n\n\ndef group(ctx):\n    return {{'m': Result({}, n=1)}}\n"
    src.write_text(body.format("1.0"))
    mod = importlib.import_module("trust_code_group")
    monkeypatch.setitem(sys.modules, "trust_code_group", mod)
    only(Group("g", "robust", ("m",), (), mod.group))
    r1 = runner.run(ckpt, "robust", tmp_path / "run", **QUIET)
    src.write_text(body.format("2.25"))  # the group's code changes; nothing else does
    mod = importlib.reload(mod)
    only(Group("g", "robust", ("m",), (), mod.group))
    r2 = runner.run(ckpt, "robust", tmp_path / "run", **QUIET)
    assert r1.metrics["m"].value == 1.0
    assert r2.run["cache"]["computed"] == ["g"] and r2.metrics["m"].value == 2.25  # before: 1.0 from the cache
    assert r2.run["code_sha256"]["g"] != r1.run["code_sha256"]["g"]


def _npz(path, lo, hi, train_lo=0):
    ds = data.load("digits")
    u8 = lambda x: (x.squeeze(1) * 255).round().to(torch.uint8).numpy()  # noqa: E731
    np.savez(path, x_train=u8(ds.train.x[train_lo:train_lo + 600]), y_train=ds.train.y[train_lo:train_lo + 600].numpy(),
             x_test=u8(ds.test.x[lo:hi]), y_test=ds.test.y[lo:hi].numpy())


def test_cache_data_changed(tmp_path, ckpt, only, one_thread):
    only("ece")
    path = tmp_path / "d.npz"
    kw = dict(model=ckpt, suite="calibration", dataset=f"npz:{path}")
    _npz(path, 0, 200)
    r1 = runner.run(out=tmp_path / "run", **kw, **QUIET)
    _npz(path, 200, 400)  # same name, same --dataset, other test images
    r2 = runner.run(out=tmp_path / "run", **kw, **QUIET)
    fresh = _fresh(tmp_path, "fresh", **kw)
    assert fresh.metrics["ece"].value != r1.metrics["ece"].value  # the test can tell the two apart
    assert r2.run["cache"]["computed"] == ["ece"]  # before: a cache hit, the old images' ECE
    assert r2.metrics["ece"].value == fresh.metrics["ece"].value
    assert r2.run["data"]["test_sha256"] != r1.run["data"]["test_sha256"]
    assert r2.run["data"]["train_sha256"] == r1.run["data"]["train_sha256"]
    _npz(path, 200, 400, train_lo=100)  # only the training images change: still recomputed
    r3 = runner.run(out=tmp_path / "run", **kw, **QUIET)
    assert r3.run["cache"]["computed"] == ["ece"] and r3.run["data"]["train_sha256"] != r2.run["data"]["train_sha256"]


def test_weights_digest_is_the_weights_not_the_file(tmp_path, ckpt):
    a = checkpoints.load(ckpt)
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(open(ckpt, "rb").read())
    assert checkpoints.load(str(copy)).weights_sha256 == a.weights_sha256
    other = tiny_model()
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1e-6
    assert checkpoints.weights_sha256(other) != a.weights_sha256
    shifted = tiny_model()  # same parameters, other normalisation: other digest
    shifted.mean.fill_(0.25)
    assert checkpoints.weights_sha256(shifted) != a.weights_sha256


def test_results_record_data_and_official_md5(tmp_path, ckpt, only):
    only(Group("g", "robust", ("m",), (), lambda ctx: {"m": Result(1.0, n=1)}))
    r = runner.run(ckpt, "robust", tmp_path / "run", **QUIET)
    d = json.loads((tmp_path / "run" / "results.json").read_text())
    assert d["model"]["weights_sha256"] == checkpoints.load(ckpt).weights_sha256
    rec = d["run"]["data"]
    assert rec["name"] == "digits" and (rec["n_train"], rec["n_test"]) == (1347, 450)
    assert rec["official_md5"] is None and rec["train_is_test"] is False
    assert rec["train_sha256"] != rec["test_sha256"] and r.run["data"] == rec
    _write_cifar10(tmp_path / "c")  # CIFAR-format files that are not the release
    assert runner.data_record(data.load("cifar10", tmp_path / "c"))["official_md5"] is False


# ---------------------------------------------------------------------------------------------
# 7. --normalize


def test_parse_normalize():
    assert checkpoints.parse_normalize("cifar10") == ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])
    assert checkpoints.parse_normalize("none") == ([0.0], [1.0])
    assert checkpoints.parse_normalize("half") == ([0.5], [0.5])
    assert checkpoints.parse_normalize("0.1,0.2,0.3/0.5") == ([0.1, 0.2, 0.3], [0.5])
    for bad, msg in [("cifar", "expected one of"), ("0.5", "expected one of"), ("a/b", "not numbers"),
                     ("0.5/0", "positive"), ("nan/1", "finite"), ("0.1,0.2/0.3,0.4,0.5", "2 means but 3 stds"),
                     ("1/2/3", "expected one of")]:
        with pytest.raises(BenchError, match=msg):
            checkpoints.parse_normalize(bad)


@pytest.fixture
def plain_pt(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "plain.pt"
    torch.save(nets.build("digits-cnn", 10, 1).state_dict(), path)
    return str(path)


def test_plain_state_dict_default_warns_and_normalize_is_recorded(tmp_path, plain_pt, only):
    only(Group("g", "robust", ("m",), (),
               lambda ctx: {"m": Result(float(ctx.model.logits(ctx.data.test.x[:5]).detach().sum()), n=5)}))
    lines = []
    kw = dict(model=plain_pt, suite="robust", out=tmp_path / "run", dataset="digits", arch="digits-cnn")
    r0 = runner.run(**kw, log=lines.append)
    assert "normalisation: mean [0] std [1] (from default (mean 0, std 1))" in lines
    assert any(m.startswith("warning: a plain state dict records no normalisation") for m in lines)
    assert r0.model["normalization"]["source"] == "default (mean 0, std 1)"
    lines.clear()
    r1 = runner.run(**kw, settings={"normalize": "half"}, log=lines.append)
    assert "normalisation: mean [0.5] std [0.5] (from --normalize half)" in lines
    assert not any(m.startswith("warning:") for m in lines)
    d = json.loads((tmp_path / "run" / "results.json").read_text())
    assert d["run"]["config"]["normalize"] == "half"
    assert d["model"]["normalization"] == {"mean": [0.5], "std": [0.5], "source": "--normalize half", "warning": None}
    assert r1.run["cache"]["computed"] == ["g"]  # another normalisation is another model
    x = data.load("digits").test.x[:5]  # independent: the network on (x - 0.5) / 0.5 by hand
    net = nets.build("digits-cnn", 10, 1)
    net.load_state_dict(torch.load(plain_pt, weights_only=True))
    with torch.no_grad():
        assert r1.metrics["m"].value == pytest.approx(float(net.eval()((x - 0.5) / 0.5).sum()), rel=1e-6)


def test_normalize_bad_input_is_one_line(tmp_path, plain_pt, ckpt, capsys):
    base = ["run", "--model", plain_pt, "--arch", "digits-cnn", "--dataset", "digits", "--suite", "robust",
            "--out", str(tmp_path / "run")]
    for args, msg in [(["--normalize", "0.5/-1"], "std must be positive"),
                      (["--normalize", "cifar10"], "3 channel values but the images have 1 channels")]:
        assert cli.main(base + args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --normalize") and msg in err[0]
    assert cli.main(["run", "--model", ckpt, "--normalize", "half", "--out", str(tmp_path / "r2")]) == 2
    assert "records its own normalisation" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# 8. training set = test set


def test_train_is_test_flagged(tmp_path):
    x = np.random.RandomState(0).randint(0, 256, (6, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "xy.npz", x=x, y=np.arange(6) % 2)
    np.savez(tmp_path / "split.npz", x_train=x, y_train=np.arange(6) % 2, x_test=x[:2], y_test=np.arange(2))
    assert data.load(f"npz:{tmp_path / 'xy.npz'}").train_is_test
    assert not data.load(f"npz:{tmp_path / 'split.npz'}").train_is_test
    from PIL import Image

    for sub in ("flat/a", "flat/b", "both/train/a", "both/test/a"):
        (tmp_path / sub).mkdir(parents=True)
        Image.fromarray(x[0]).save(tmp_path / sub / "0.png")
    assert data.load(f"folder:{tmp_path / 'flat'}").train_is_test
    assert not data.load(f"folder:{tmp_path / 'both'}").train_is_test
    assert not data.load("digits").train_is_test


def test_train_is_test_refuses_fid_and_ssim(tmp_path, ckpt, one_thread):
    ds = data.load("digits")
    np.savez(tmp_path / "xy.npz", x=(ds.test.x.squeeze(1) * 255).round().to(torch.uint8).numpy(), y=ds.test.y.numpy())
    lines = []
    r = runner.run(ckpt, "generative,memorization", tmp_path / "run", dataset=f"npz:{tmp_path / 'xy.npz'}",
                   settings={"n_gen": 20, "gen_steps": 2}, log=lines.append)
    assert r.run["data"]["train_is_test"] is True
    assert any(m.startswith("warning: data set npz:") and "same images" in m for m in lines)
    for name in ("fid", "ssim_nn"):  # before: numbers against the test images themselves
        assert r.metrics[name].value is None and "refused: the training and test sets are the same images" \
            in r.metrics[name].reason



def test_train_is_test_refuses_temperature_scaling(tmp_path, ckpt, one_thread):
    ds = data.load("digits")
    np.savez(tmp_path / "xy.npz", x=(ds.test.x.squeeze(1) * 255).round().to(torch.uint8).numpy(), y=ds.test.y.numpy())
    r = runner.run(ckpt, "calibration", tmp_path / "run", dataset=f"npz:{tmp_path / 'xy.npz'}",
                   settings={"n_eval": 60}, log=lambda m: None)
    for name in ("temperature", "ece_ts", "nll_ts", "brier_ts_fgsm"):  # fitted on the evaluated points
        assert r.metrics[name].value is None and "none is held out to fit the temperature" \
            in r.metrics[name].reason, name
    assert r.metrics["nll"].value is not None and r.metrics["ece"].value is not None  # no fit: kept

# ---------------------------------------------------------------------------------------------
# 9. metrics put the model in eval mode and restore its mode


def _bn_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Softplus(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten(), nn.Linear(16, 10))
    m = EnergyModel(net, 0.5, 0.5, (1, 8, 8), 10).train()
    net[5].eval()  # a mixed state: every module's own mode must come back
    return m


def _state(m):
    bn = m.net[1]
    return (bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked),
            [mod.training for mod in m.modules()])


@pytest.mark.parametrize("what", ["pgd", "ece", "fisher"])
def test_metrics_use_eval_mode_and_restore_it(tmp_path, digits, what, one_thread):
    from bench.engines.attacks import pgd
    from bench.engines.fisher_terms import fisher_scores
    from bench.metrics.calibration import ece_group

    m = _bn_model()
    before = _state(m)
    x, y = digits.test.x[:32], digits.test.y[:32]
    with torch.no_grad():
        expected = m.eval().logits(x)  # eval-mode logits, the reference of the ECE below
    m.train()
    m.net[5].eval()
    if what == "pgd":
        pgd(m, x, y, eps=0.1, steps=3, generator=torch.Generator().manual_seed(0))
    elif what == "ece":
        ctx = Context(m, data.Dataset("d", digits.train, data.Split(x, y), 10), dict(DEFAULTS, n_eval=32, eps=0.1),
                      torch.device("cpu"), tmp_path)
        r = ece_group(ctx)["ece"]
        conf, pred = torch.softmax(expected.double(), 1).max(1)  # ECE of the eval-mode model, by hand
        ece = 0.0
        for b in range(20):  # 20 equal-width (lo, hi] bins
            inb = (conf > b / 20) & (conf <= (b + 1) / 20)
            if inb.any():
                ece += inb.sum().item() / 32 * abs(conf[inb].mean().item() - (pred == y)[inb].double().mean().item())
        assert r.value == pytest.approx(ece, abs=1e-9)
    else:
        fisher_scores(m, x[:4], y[:4], probes=2, generator=torch.Generator().manual_seed(0))
    after = _state(m)
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1]) and after[2] == before[2]
    assert after[3] == before[3] and m.training and not m.net[5].training


def test_eval_mode_restores_after_an_error():
    from bench.core.energy import eval_mode

    m = _bn_model()
    modes = [mod.training for mod in m.modules()]
    with pytest.raises(RuntimeError), eval_mode(m):
        assert not any(mod.training for mod in m.modules())
        raise RuntimeError("boom")
    assert [mod.training for mod in m.modules()] == modes
