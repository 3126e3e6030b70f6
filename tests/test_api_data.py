"""bench.load and bench.evaluate on arrays and torch Datasets (issue 31): a released model as an
nn.Module that evaluates as its file, and data in memory identified by its content, checked as an
npz data set is, each fault one line."""

import json
import math

import numpy as np
import pytest
import torch

import bench
from bench.api import _data
from bench.cli import main
from bench.core.errors import BenchError
from bench.inputs import data, zoo
from bench.metrics import Group, Result, registry
from tests.conftest import tiny_model

QUIET = {"device": "cpu", "log": lambda m: None}


def _accuracy(ctx):
    test = ctx.data.test.subset(ctx.settings["n_eval"])
    with torch.no_grad():
        ok = (ctx.model.logits(test.x.to(ctx.device)).argmax(1).cpu() == test.y).double()
    return {"acc": Result(float(ok.mean()), None, len(ok))}


ACC = {"acc": Group("acc", "robust", ("acc",), ("n_eval",), _accuracy)}


@pytest.fixture(scope="module")
def digits_arrays():
    ds = data.load("digits")
    return ds, (ds.train.x.numpy(), ds.train.y.numpy()), (ds.test.x.numpy(), ds.test.y.numpy())


def test_load_a_released_name_and_evaluate_it_as_its_file(tmp_path, use_groups, capsys):
    use_groups(ACC)
    net = bench.load("digits-jeat")
    assert isinstance(net, torch.nn.Module) and not net.training
    ds = data.load("digits")
    with torch.no_grad():
        acc = (net(ds.test.x).argmax(1) == ds.test.y).double().mean().item()
    manifest = zoo.manifest("digits")["models"]["digits-jeat"]
    assert acc == pytest.approx(manifest["clean_test_accuracy"], abs=1e-12)  # what training measured
    ev = bench.evaluate(net, suites="robust", n_eval=50, **QUIET)  # no data: the file's data set
    assert main(["run", "--model", "digits-jeat", "--suite", "robust", "--n-eval", "50", "--device", "cpu",
                 "--out", str(tmp_path / "cli")]) == 0
    ref = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert ev.model == ref["model"] and ev.model["sha256"] == manifest["sha256"] and ev.model["method"] == "jeat"
    assert ev.run["config"] == ref["run"]["config"] and ev.run["config"]["eps"] == 0.1  # the threat model's
    assert ev.metrics["acc"].value == ref["metrics"]["acc"]["value"]
    with torch.no_grad():  # fine-tuned: no longer the file, a module in memory
        next(net.parameters()).add_(0.01)
    moved = bench.evaluate(net, "digits", suites="robust", n_eval=50, **QUIET)
    assert moved.model["path"].startswith("<in memory") and moved.model["sha256"] != manifest["sha256"]
    with pytest.raises(BenchError, match=r"trained on \(1, 8, 8\) images but arrays has \(1, 16, 16\)"):
        bench.evaluate(bench.load("digits-jeat"), (torch.rand(4, 1, 16, 16), torch.arange(4)), **QUIET)


def test_load_refuses_unknown_names_and_bare_state_dicts_in_one_line(tmp_path):
    with pytest.raises(BenchError, match="did you mean fmnist-jeat") as e:
        bench.load("fmnist-jeet")
    assert "\n" not in str(e.value)
    torch.save(tiny_model().net.state_dict(), tmp_path / "w.pt")
    with pytest.raises(BenchError, match=r"needs num_classes= and input_shape=\(C, H, W\)"):
        bench.load(str(tmp_path / "w.pt"), arch="digits-cnn")
    m = bench.load(str(tmp_path / "w.pt"), arch="digits-cnn", arch_kwargs={"width": 4}, num_classes=10,
                   input_shape=(1, 8, 8), normalize="half")
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(m(x), tiny_model().net((x - 0.5) / 0.5))  # weights and normalisation as given


def test_arrays_are_the_data_set_their_content_is(digits_arrays, tmp_path, use_groups):
    use_groups(ACC)
    ds, train, test = digits_arrays
    model = tiny_model()
    named = bench.evaluate(model, "digits", suites="robust", n_eval=100, **QUIET)
    only_test = bench.evaluate(model, test, suites="robust", n_eval=100, **QUIET)
    both = bench.evaluate(model, (train, test), suites="robust", n_eval=100, **QUIET)
    tensors = bench.evaluate(model, torch.utils.data.TensorDataset(ds.test.x, ds.test.y), suites="robust",
                             n_eval=100, **QUIET)
    grey = bench.evaluate(model, data=(test[0][:, 0], list(test[1])), suites="robust", n_eval=100, **QUIET)
    with torch.no_grad():
        by_hand = (model(ds.test.x[:100]).argmax(1) == ds.test.y[:100]).double().mean().item()
    for ev in (named, only_test, both, tensors, grey):
        assert ev.metrics["acc"].value == by_hand
        assert ev.run["data"]["test_sha256"] == data.split_sha256(ds.test) == named.run["data"]["test_sha256"]
    assert only_test.model["dataset"] == "arrays" and only_test.run["data"]["train_is_test"] is True
    assert both.run["data"]["train_sha256"] == named.run["data"]["train_sha256"]
    assert both.run["data"]["train_is_test"] is False and both.run["data"]["n_train"] == 1347
    # the digest keys the cache: the same arrays hit it, one changed pixel does not
    out = tmp_path / "o"
    bench.evaluate(model, test, suites="robust", out=out, n_eval=100, **QUIET)
    again = bench.evaluate(model, (test[0].copy(), test[1].copy()), suites="robust", out=out, n_eval=100, **QUIET)
    assert again.run["cache"]["hits"] == ["acc"]
    x = test[0].copy()
    x[0, 0, 0, 0] = 1 - x[0, 0, 0, 0]
    other = bench.evaluate(model, (x, test[1]), suites="robust", out=out, n_eval=100, **QUIET)
    assert other.run["cache"] == {"hits": [], "computed": ["acc"]}
    assert other.run["data"]["test_sha256"] != named.run["data"]["test_sha256"]


def test_only_test_arrays_refuse_what_needs_a_training_split(digits_arrays, use_groups):
    """(x, y) alone: the training split is the evaluated points, so the temperature fit (and FID, SSIM
    neighbours, ...) refuse with the reason; with a training split it runs."""
    real = registry.load_all()["calibration_extra"]
    use_groups({"calibration_extra": real})
    _, train, test = digits_arrays
    lines = []
    alone = bench.evaluate(tiny_model(), test, suites="calibration", n_eval=40, device="cpu", log=lines.append)
    assert alone.metrics["ece_ts"].value is None
    assert alone.metrics["ece_ts"].reason.startswith("refused: the training and test sets are the same images")
    assert any(s.startswith("warning: data set arrays: the training and test sets are the same images") for s in lines)
    split = bench.evaluate(tiny_model(), (train, test), suites="calibration", n_eval=40, **QUIET)
    assert split.metrics["ece_ts"].value is not None and split.metrics["nll"].value == alone.metrics["nll"].value


def test_a_torch_dataset_yielding_tensors_or_pil_images():
    from PIL import Image
    from torchvision import transforms

    class Pictures(torch.utils.data.Dataset):
        def __init__(self, transform):
            g = np.random.default_rng(0)
            self.images = g.integers(0, 256, (12, 8, 8), dtype=np.uint8)
            self.transform = transform

        def __len__(self):
            return 12

        def __getitem__(self, i):
            return self.transform(Image.fromarray(self.images[i])), i % 10

    raw = _data(tiny_model(), Pictures(lambda im: im), None)  # PIL images as they are
    tensor = _data(tiny_model(), Pictures(transforms.ToTensor()), None)
    expected = torch.from_numpy(Pictures(None).images).float().unsqueeze(1) / 255
    assert torch.equal(raw.test.x, expected) and torch.allclose(tensor.test.x, expected, atol=1e-7)
    assert raw.test.y.tolist() == [i % 10 for i in range(12)] and raw.num_classes == 10
    assert raw.train_is_test and raw.name == "arrays"
    pair = _data(tiny_model(), (Pictures(lambda im: im), Pictures(transforms.ToTensor())), None)
    assert not pair.train_is_test and torch.equal(pair.train.x, raw.test.x)  # (training Dataset, test Dataset)
    normalised = Pictures(transforms.Compose([transforms.ToTensor(), transforms.Normalize(0.5, 0.5)]))
    with pytest.raises(BenchError, match="a transforms.Normalize in the Dataset") as e:
        _data(tiny_model(), normalised, None)
    assert "\n" not in str(e.value)


X = np.random.default_rng(0).random((6, 1, 8, 8)).astype(np.float32)
Y = np.arange(6)


@pytest.mark.parametrize("given, message", [
    ((X * 255, Y), "float images must lie in [0, 1], found"),
    ((np.where(X > 0.5, np.nan, X), Y), "images contain NaN or inf"),
    ((X[:, 0, 0], Y), "empty or not a batch of images (shape (6, 8))"),
    ((X, Y[:5]), "labels must be 6 non-negative integers"),
    ((X, Y.astype(float)), "labels must be 6 non-negative integers, got shape (6,) float64"),
    ((X, Y - 1), "labels must be 6 non-negative integers"),
    ((X, Y + 7), "label 12 but the model has 10 outputs (labels 0..9)"),
    (((X, Y), (X[:, :, :4], Y)), "training images are (1, 8, 8) but test images (1, 4, 8)"),
    ((X, Y, Y), "expected (x, y), ((x_train, y_train), (x_test, y_test))"),
    ({"x": X}, "got a dict"),
    ((torch.rand(6, 3, 8, 8), torch.arange(6)), "model takes 1-channel images but arrays has 3 channels"),
])
def test_bad_arrays_are_one_line_errors(given, message, use_groups):
    use_groups(ACC)
    with pytest.raises(BenchError) as e:
        bench.evaluate(tiny_model(), given, suites="robust", **QUIET)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_data_and_dataset_are_one_argument():
    with pytest.raises(BenchError, match="give data= or dataset=, not both"):
        bench.evaluate(tiny_model(), (X, Y), dataset="digits")


def test_print_shows_one_metric_a_line_with_std_n_and_eps(use_groups):
    use_groups({"two": Group("two", "robust", ("a", "b"), ("n_eval",),
                             lambda ctx: {"a": Result(0.5, math.sqrt(0.25 / 40), 40), "b": Result.missing("why")})})
    ev = bench.evaluate(tiny_model(), "digits", suites="robust", n_eval=40, eps=0.05, **QUIET)
    lines = str(ev).splitlines()
    assert "on digits, 450 test points" in lines[0]
    assert lines[1:] == ["a  0.5000  ± 0.0791  n=40", "b  null  (why)",
                         "threat model: Linf eps = 0.05 (12.75/255 of the [0, 1] pixel range); "
                         "set it with --eps (eps= in bench.evaluate)"]
    assert "\n" not in repr(ev) and "2 metrics" in repr(ev)
