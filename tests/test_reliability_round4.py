"""Reliability (issue 35, fourth round): bench.functional refuses what it cannot measure (non-finite
logits, an empty set, a FID of one sample, feature sets of different sizes) with one ValueError;
bench.evaluate and the model-taking functions give the caller's module back in its own mode; usage
errors name the command once; an empty path is refused; and --out is written inside only."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import bench
import bench.functional as F
from bench.cli import main
from bench.core import results
from bench.core.errors import BenchError
from bench.inputs import checkpoints
from bench.metrics import Group, Result
from bench.outputs import report
from bench.pipeline import outlock
from tests.conftest import tiny_model
from tests.test_reliability import FAST, META, _one_error_line

pytestmark = pytest.mark.usefixtures("one_thread_own_cache")


# --------------------------------------------------------------------------------------------
# bench.functional: one ValueError naming the problem


NAN4 = torch.full((4, 5), float("nan"))
Y4 = torch.tensor([0, 0, 3, 3])  # argmax of a NaN row is 0: accuracy 0.5 before the fix


@pytest.mark.parametrize("fn, args", [
    (F.accuracy, (NAN4, Y4)),
    (F.nll, (NAN4, Y4)),
    (F.accuracy, (torch.tensor([[1.0, 0.0], [float("inf"), 0.0], [0.0, 1.0]]), torch.tensor([0, 0, 1]))),
])
def test_functional_refuses_non_finite_logits(fn, args):
    bad = int((~torch.isfinite(args[0]).all(1)).sum())
    with pytest.raises(ValueError, match=rf"^non-finite logits \(NaN or inf\) in {bad} of the {len(args[0])} rows$"):
        fn(*args)


def test_functional_refuses_non_finite_probabilities_scores_and_features():
    p = torch.tensor([[0.5, 0.5], [float("nan"), 0.5]])
    for fn, args in ((F.brier, (p, torch.tensor([0, 1]))), (F.ece, (p, torch.tensor([True, False]))),
                     (F.reliability, (p, torch.tensor([True, False])))):
        with pytest.raises(ValueError, match=r"^non-finite probabilities \(NaN or inf\) in 1 of the 2 rows$"):
            fn(*args)
    with pytest.raises(ValueError, match=r"^non-finite scores \(NaN or inf\) in 1 of the 3 rows$"):
        F.auroc(torch.tensor([1.0, float("nan"), 2.0]), torch.tensor([0.0, 1.0]))
    a = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    b = a.clone()
    b[4, 1] = float("inf")
    with pytest.raises(ValueError, match=r"^non-finite features \(NaN or inf\) in 1 of the 10 rows$"):
        F.fid(a, b)


class _NanNet(nn.Module):
    def forward(self, x):
        return torch.full((len(x), 3), float("nan")) + 0 * x.flatten(1).sum(1, keepdim=True)


def test_functional_refuses_a_model_with_non_finite_logits():
    x, y = torch.rand(4, 1, 2, 2), torch.tensor([0, 0, 1, 2])
    for fn in (lambda: F.robust_accuracy(_NanNet(), x, y, eps=0.1, steps=1),
               lambda: F.fisher_scores(_NanNet(), x, y, probes=1)):
        with pytest.raises(ValueError, match=r"^non-finite logits \(NaN or inf\) in 4 of the 4 rows$"):
            fn()


@pytest.mark.parametrize("fn, args, message", [
    (F.fid, (torch.randn(1, 3), torch.randn(50, 3)), "needs at least 2 samples in each feature set, got 1 and 50"),
    (F.fid, (torch.randn(50, 3), torch.randn(1, 3)), "needs at least 2 samples in each feature set, got 50 and 1"),
    (F.fid, (torch.randn(50, 3), torch.randn(50, 4)), "the feature sets differ in size: 3 and 4 features per sample"),
    (F.kid, (torch.randn(50, 3), torch.randn(50, 4)), "the feature sets differ in size: 3 and 4 features per sample"),
    (F.precision_recall, (torch.randn(50, 3), torch.randn(50, 4)),
     "the feature sets differ in size: 3 and 4 features per sample"),
    (F.nll, (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)), "nll of an empty set"),
    (F.brier, (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)), "brier of an empty set"),
    (F.accuracy, (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)), "proportion of an empty set"),
])
def test_functional_bad_sizes_are_one_value_error(fn, args, message):
    with pytest.raises(ValueError) as info:
        fn(*args)
    assert type(info.value) is ValueError and str(info.value) == message


def test_functional_values_unchanged_on_good_input():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 1, 1])
    assert F.accuracy(logits, y)[0] == 0.75  # 3 of 4 by hand
    by_hand = -sum(torch.log_softmax(logits, 1)[i, int(y[i])].item() for i in range(4)) / 4
    assert abs(F.nll(logits, y) - by_hand) < 1e-6


# --------------------------------------------------------------------------------------------
# the caller's module comes back in its own mode


class _BnDrop(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))


def _modes(m: nn.Module) -> dict[str, bool]:
    return {name: mod.training for name, mod in m.named_modules()}


def test_evaluate_gives_the_module_back_in_its_own_mode(tmp_path):
    net = _BnDrop().train()
    net.fc.eval()  # a mixed state: each submodule's own mode must come back
    before = _modes(net)
    assert before[""] is True and before["fc"] is False
    bench.evaluate(net, "digits", "calibration", out=tmp_path / "o", device="cpu", n_eval=20, log=lambda m: None)
    assert _modes(net) == before


def test_functional_model_functions_give_the_module_back_in_its_own_mode():
    net = _BnDrop().train()
    before = _modes(net)
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    F.robust_accuracy(net, x, y, eps=0.1, steps=1)
    F.fisher_scores(net, x, y, probes=1)
    assert _modes(net) == before


# --------------------------------------------------------------------------------------------
# the command line: usage errors name the command once; an empty path is refused


@pytest.mark.parametrize("argv, command", [(["no-such-command"], "bench"), (["--bogus"], "bench"),
                                           (["compare"], "bench compare"),
                                           (["run", "--bogus"], "bench run"), (["table"], "bench table")])
def test_usage_error_names_the_program_once(argv, command, capsys):
    assert main(argv) == 2
    err = _one_error_line(capsys)
    assert err.endswith(f"(see {command} --help)") and "bench bench" not in err, err


@pytest.mark.parametrize("argv, what", [
    (["run", "--suite", "robust", "--out", ""], "'--out'"),
    (["train", "--recipe", "digits-normal", "--out", ""], "'--out'"),
    (["table", "--out", "", "somewhere"], "'--out'"),
    (["table", "--out", "somewhere", ""], "'DIR...'"),
    (["samples", "", "--dataset", "digits"], "'PATH'"),
    (["samples", "x.npz", "--dataset", "digits", "--out", ""], "'--out'"),
    (["ref-stats", "--dataset", "digits", "--out", ""], "'--out'"),
])
def test_empty_path_is_refused(argv, what, tmp_path, monkeypatch, capsys, use_groups):
    use_groups(FAST)
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = _one_error_line(capsys)
    assert err.startswith(f"error: Invalid value for {what}: an empty path, which would mean the working folder"), err
    assert not {"results.json", "tables", "figures", "cache"} & set(os.listdir(tmp_path))


# --------------------------------------------------------------------------------------------
# several --model: reserved names, every model resolved first


def plain_net():
    """A py: factory: the tiny CNN, a plain module (--normalize applies to it)."""
    return tiny_model().net


def _checkpoint(path):
    checkpoints.save(path, tiny_model(), META)
    return str(path)


RUN = ["--suite", "robust", "--n-eval", "20", "--device", "cpu"]


def test_a_model_named_tables_is_refused_before_anything_runs(tmp_path, capsys, use_groups):
    use_groups(FAST)
    first, tables = _checkpoint(tmp_path / "first.safetensors"), _checkpoint(tmp_path / "tables.safetensors")
    out = tmp_path / "o"
    assert main(["run", "--model", first, "--model", tables, *RUN, "--out", str(out)]) == 2
    err = _one_error_line(capsys)
    assert err == (f"error: --model {tables}: its folder would be {out / 'tables'}, where the combined tables of "
                   "the models go; rename the file (any stem but tables)"), err
    assert not out.exists()


@pytest.mark.parametrize("bad, message", [
    ("missing.safetensors", "model file not found: {path}"),
    ("own.safetensors", "--normalize half: {path} records its own normalisation"),
])
def test_a_bad_model_among_several_fails_before_the_first_runs(bad, message, tmp_path, capsys, use_groups):
    use_groups(FAST)
    path = tmp_path / bad
    if bad.startswith("own"):
        _checkpoint(path)
    out = tmp_path / "o"
    code = main(["run", "--model", "py:tests.test_reliability_round4:plain_net", "--model", str(path),
                 "--dataset", "digits", "--normalize", "half", *RUN, "--out", str(out)])
    err = _one_error_line(capsys)
    assert code == 2 and message.format(path=path) in err, err
    assert not out.exists()  # the good model did not run first


def test_several_models_still_run_and_table(tmp_path, capsys, use_groups):
    use_groups(FAST)
    a, b = _checkpoint(tmp_path / "a.safetensors"), _checkpoint(tmp_path / "b.safetensors")
    out = tmp_path / "o"
    assert main(["run", "--model", a, "--model", b, *RUN, "--out", str(out)]) == 0, capsys.readouterr().err
    assert (out / "a" / "results.json").is_file() and (out / "b" / "results.json").is_file()
    assert (out / "tables" / "report.html").is_file()


# --------------------------------------------------------------------------------------------
# --out: written inside only; stale temporaries of dead processes cleaned when it is locked

ONE = ["run", "--model", "py:tests.test_reliability_round4:plain_net", "--dataset", "digits", *RUN]


@pytest.mark.parametrize("folder", ["tables", "figures", "samples", "cache"])
def test_a_folder_linked_out_of_out_is_refused_by_name(folder, tmp_path, capsys, use_groups):
    use_groups(FAST)
    out, elsewhere = tmp_path / "o", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / folder).symlink_to(elsewhere, target_is_directory=True)
    assert main([*ONE, "--out", str(out)]) == 2
    err = _one_error_line(capsys)
    assert err == (f"error: {out / folder} is a symbolic link to {elsewhere}, outside --out {out}; bench writes "
                   "inside --out only: remove the link or use another --out"), err
    assert list(elsewhere.iterdir()) == [] and not (out / "results.json").exists()


def test_a_folder_linked_inside_out_is_written(tmp_path, capsys, use_groups):
    use_groups(FAST)
    out = tmp_path / "o"
    (out / "real-cache").mkdir(parents=True)
    (out / "cache").symlink_to("real-cache", target_is_directory=True)
    assert main([*ONE, "--out", str(out)]) == 0, capsys.readouterr().err
    assert any((out / "real-cache").iterdir())


def _dead_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # exited and reaped: its pid is dead on this host
    return gone.pid


def test_temporaries_of_dead_processes_are_removed_when_out_is_locked(tmp_path, capsys, use_groups):
    use_groups(FAST)
    out, dead, live = tmp_path / "o", _dead_pid(), os.getppid()
    (out / "cache").mkdir(parents=True)
    stale = [out / f".results.json.tmp{dead}", out / "cache" / f".seen-0.json.tmp{dead}", out / f".write-test{dead}"]
    kept = [out / f".results.json.tmp{live}", out / f"notes.tmp{dead}"]  # a live writer's; not a temporary's name
    for p in stale + kept:
        p.write_text("x")
    assert main([*ONE, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"note: removed 3 temporary file(s) left in {out} by processes no longer running" in err, err
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


def test_lock_cleans_only_after_it_is_taken(tmp_path):
    out, dead = tmp_path / "o", _dead_pid()
    out.mkdir()
    tmp = out / f".report.html.tmp{dead}"
    tmp.write_text("x")
    (out / ".bench.lock").write_text(json.dumps({"pid": os.getpid(), "host": __import__("socket").gethostname()}))
    with pytest.raises(BenchError, match="in use by another bench run"):
        outlock.acquire(out, log=lambda m: None)
    assert tmp.exists()  # another run holds the folder: nothing of it is touched
    (out / ".bench.lock").unlink()
    notes = []
    with outlock.held(out, log=notes.append):
        assert not tmp.exists()
    assert len(notes) == 1 and notes[0].endswith(f": .report.html.tmp{dead}"), notes


# --------------------------------------------------------------------------------------------
# a deleted figure: its group is computed again on a cached rerun; the report names missing files


def _drawn(ctx):
    from PIL import Image

    f = ctx.figure("drawn.png")
    Image.new("L", (3, 2), 128).save(f.path)
    return {"drawn": Result(1.0, n=1, details={"figure": f.rel})}


DRAWN = {"drawn": Group("drawn", "robust", ("drawn",), (), _drawn)}


def test_a_deleted_figure_is_drawn_again_on_a_cached_rerun(tmp_path, capsys, use_groups):
    use_groups(DRAWN)
    out = tmp_path / "o"
    assert main([*ONE, "--out", str(out)]) == 0
    png = out / "figures" / "drawn.png"
    assert png.is_file()
    assert main([*ONE, "--out", str(out)]) == 0  # everything cached
    assert json.loads((out / "results.json").read_text())["run"]["cache"]["hits"] == ["drawn"]
    png.unlink()
    capsys.readouterr()
    assert main([*ONE, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "drawn: cached, but its figure file(s) figures/drawn.png are missing: recomputing" in err, err
    assert png.is_file()
    assert json.loads((out / "results.json").read_text())["run"]["cache"]["computed"] == ["drawn"]
    html = (out / "report.html").read_text()
    assert 'alt="figures/drawn.png"' in html and "No figures recorded" not in html


def test_the_report_names_a_missing_figure(tmp_path, capsys, use_groups):
    use_groups(DRAWN)
    out = tmp_path / "o"
    assert main([*ONE, "--out", str(out)]) == 0
    (out / "figures" / "drawn.png").unlink()
    report.write_run_report(results.read(out / "results.json"), out)
    html = (out / "report.html").read_text()
    assert f"Recorded in results.json but missing from {out}: figures/drawn.png." in html, html
    assert "No figures recorded" not in html
