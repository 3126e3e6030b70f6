"""bench.evaluate: a model in memory gives the numbers `bench run` gives for the same weights."""

import json

import pytest
import torch

import bench
from bench.cli import main
from bench.core.errors import BenchError
from bench.core.results import read
from bench.inputs import checkpoints, zoo

# eps 0.3 (digits' usual 0.1 three times): APGD-CE breaks every AutoAttack point at once, so the
# later attacks (APGD-T, FAB-T, Square's 5,000 queries) have no point left: under a second of CPU
# instead of about 15 s per run, for the same comparison of bench run and bench.evaluate
AA_FAST = {"n_aa": 4, "eps": 0.3}
SETTINGS = {"n_eval": 40, "seed": 3, "batch_size": 16, **AA_FAST}
SUITES = "robust,calibration"


@pytest.fixture(scope="module")
def released():
    """The released digits JEAT as a notebook user holds it: its network (an nn.Module on the
    normalised input) and the mean/std the file records, read from the file's own metadata."""
    from safetensors import safe_open

    path = zoo.released_path()
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["bench"])
    net = checkpoints.load(str(path)).model.net
    return path, net, meta


def _flags(settings: dict) -> list[str]:
    return [a for k, v in settings.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def test_evaluate_equals_bench_run_on_the_released_digits_jeat(released, tmp_path, one_thread, capsys):
    path, net, meta = released
    cli_out = tmp_path / "cli"
    assert main(["run", "--model", str(path), "--suite", SUITES, "--device", "cpu", "--out", str(cli_out),
                 *_flags(SETTINGS)]) == 0, capsys.readouterr().err
    ref = read(cli_out / "results.json")

    ev = bench.evaluate(net, dataset="digits", suites=SUITES.split(","), mean=meta["mean"], std=meta["std"],
                        device="cpu", log=lambda m: None, **SETTINGS)
    assert list(ev.metrics) == list(ref.metrics) and len(ev.metrics) >= 20
    for k, r in ref.metrics.items():  # metric for metric: the same code on the same weights, bit for bit
        got = ev.metrics[k]
        assert (got.value, got.std, got.n, got.reason) == (r.value, r.std, r.n, r.reason), k
    assert ev.metrics["pgd20"].value < ev.metrics["accuracy"].value  # a real attack ran
    # the same weights as evaluated; the identity is the module's (its state dict, its class)
    assert ev.model["weights_sha256"] == ref.model["weights_sha256"]
    assert ev.model["sha256"] == checkpoints.module_sha256(net) != ref.model["sha256"]
    assert ev.model["arch"] == "bench.inputs.nets.digits_cnn.DigitsCNN" and "DigitsCNN" in ev.model["path"]
    assert ev.model["normalization"]["mean"] == ref.model["normalization"]["mean"] == [0.5]
    config = {k: v for k, v in ev.run["config"].items() if k != "normalize"}
    assert config == {k: v for k, v in ref.run["config"].items() if k != "normalize"}
    assert ev.run["config"]["normalize"] == "0.5/0.5"

    # to_frame: one row per metric, the values of results.json
    frame = ev.to_frame()
    assert list(frame.index) == list(ref.metrics) and list(frame.columns) == ["value", "std", "n", "reason", "suite"]
    assert frame.loc["pgd20", "value"] == ref.metrics["pgd20"].value and frame.loc["ece", "n"] == 40
    assert frame.loc["ece", "suite"] == "calibration" and frame.loc["accuracy", "suite"] == "robust"

    # save: the folder bench run writes, which bench table reads beside the command line's
    saved = ev.save(tmp_path / "saved")
    assert {p.name for p in saved.iterdir()} >= {"results.json", "tables", "figures", "report.html"}
    assert read(saved).metrics["ece_fgsm"].value == ref.metrics["ece_fgsm"].value
    assert main(["table", str(saved), str(cli_out), "--out", str(tmp_path / "both")]) == 0
    with pytest.raises(BenchError, match="already holds a results.json"):
        ev.save(cli_out)
    folder = ev.folder
    del ev
    import gc

    gc.collect()
    assert not folder.exists()  # the temporary folder went with the object


def test_evaluate_into_out_and_an_energy_model(released, tmp_path, one_thread):
    """With ``out`` it writes where bench run would; an EnergyModel brings its own normalisation,
    and a second call reuses the cache (the module's state-dict sha256 keys it)."""
    _, net, _ = released
    model = checkpoints.load(str(zoo.released_path())).model
    ev = bench.evaluate(model, "digits", "robust", out=tmp_path / "o", device="cpu", log=lambda m: None,
                        n_eval=20, **AA_FAST)
    assert (tmp_path / "o" / "results.json").is_file() and ev.folder == tmp_path / "o"
    assert ev.model["normalization"]["source"] == "the given's EnergyModel"
    again = bench.evaluate(model, "digits", "robust", out=tmp_path / "o", device="cpu", log=lambda m: None,
                           n_eval=20, **AA_FAST)
    assert again.run["cache"]["hits"] == ["accuracy", "pgd20", "pgd20_energy", "autoattack"]
    assert again.metrics["pgd20"].value == ev.metrics["pgd20"].value


@pytest.mark.parametrize("call, message", [
    (lambda net: bench.evaluate("models/digits/digits-jeat.safetensors", dataset="digits"), "takes an nn.Module"),
    (lambda net: bench.evaluate(net), "needs data="),
    (lambda net: bench.evaluate(net, "digits", n_evl=10), "unknown setting 'n_evl'; did you mean n_eval"),
    (lambda net: bench.evaluate(net, "digits", n_eval=0), "n-eval must be a positive integer, got 0"),
    (lambda net: bench.evaluate(net, "digits", eps=8), "outside"),
    (lambda net: bench.evaluate(net, "digits", suites="robust,nosuch"), "unknown suite 'nosuch'"),
    (lambda net: bench.evaluate(net, "digits", normalize="half", mean=0.5), "not both"),
    (lambda net: bench.evaluate(net, "digits", mean=[0.5, 0.5], std=0.5), "2 channel values but the images have 1"),
    (lambda net: bench.evaluate(net, "digits", normalize="nosuch"), "--normalize 'nosuch'"),
    (lambda net: bench.evaluate(torch.nn.Linear(3, 2), "digits"), "does not accept digits images"),
    (lambda net: bench.evaluate(net, "nosuch"), "nosuch"),
])
def test_bad_arguments_are_one_line_errors(released, call, message):
    _, net, _ = released
    with pytest.raises(BenchError) as e:
        call(net)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_an_empty_out_is_refused_as_bench_run_refuses_it(released, tmp_path, monkeypatch):
    """``out=""`` would be the working folder (results.json, tables/, figures/, cache/ written
    there): one error, as ``bench run --out ''`` gives, and nothing written."""
    _, net, _ = released
    monkeypatch.chdir(tmp_path)
    for out in ("", "  "):
        with pytest.raises(BenchError) as e:
            bench.evaluate(net, "digits", "calibration", out=out, device="cpu", log=lambda m: None, n_eval=8)
        assert "empty path" in str(e.value) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []
