"""Reliability (issue 27): image modes of PNG folders, non-float weights, resume after the final
evaluation, full disks and unwritable folders, incomplete checkpoint metadata, py: factories that
fail or return odd things, out-of-range seeds, interrupt messages and broken symbolic links.
Every case is one ``error:`` line (exit 2), a warning that goes on, or a finished run."""

import errno
import json
import os
import signal
import types

import numpy as np
import pytest
import torch
from PIL import Image

from bench.cli import main
from bench.core import fileio
from bench.core.errors import BenchError
from bench.engines import plots, refstats
from bench.inputs import checkpoints, data, images
from bench.metrics import Group, Result
from tests.conftest import tiny_model
from tests.test_reliability import FAST, META, fitted_tiny_model
from tests.test_train import small

THREADS = 1


@pytest.fixture(autouse=True)
def few_threads(monkeypatch, tmp_path):
    n = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    monkeypatch.setenv("JEAT_BENCH_CACHE", str(tmp_path / "jeat-cache"))
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    checkpoints.save(path, fitted_tiny_model(), META)
    return path


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


# --------------------------------------------------------------------------------------------
# image modes: one reader (bench.inputs.images) for folder: data sets, --ood folder: and bench samples


def _digit_folder(root, mode: str, n: int = 30):
    """The first n digits test images as 8-bit PNGs in class folders, written in ``mode``; -> grey
    values (N, 8, 8) uint8."""
    ds = data.load("digits")
    grey = (ds.test.x[:n, 0] * 255).round().to(torch.uint8).numpy()
    perm = np.random.RandomState(0).permutation(256)  # a palette whose index is not the grey value
    inverse = np.argsort(perm)
    for i, (g, y) in enumerate(zip(grey, ds.test.y[:n].tolist(), strict=True)):
        d = root / str(y)
        d.mkdir(parents=True, exist_ok=True)
        if mode == "P":
            im = Image.fromarray(inverse[g].astype(np.uint8), "P")
            im.putpalette([v for p in perm for v in (p, p, p)])
        elif mode in ("LA", "RGBA"):
            im = Image.fromarray(g, "L").convert(mode)
        else:
            im = Image.fromarray(g, "L")
        im.save(d / f"{i:03d}.png")
    return grey


def test_palette_pngs_read_as_their_grey_values(tmp_path):
    grey = _digit_folder(tmp_path / "p", "P")
    _digit_folder(tmp_path / "l", "L")
    p, lum = data.load(f"folder:{tmp_path / 'p'}"), data.load(f"folder:{tmp_path / 'l'}")
    assert p.input_shape == lum.input_shape == (1, 8, 8)
    assert torch.equal(p.test.x, lum.test.x) and torch.equal(p.test.y, lum.test.y)
    assert sorted((p.test.x[:, 0] * 255).round().to(torch.uint8).flatten().tolist()) == sorted(grey.flatten().tolist())


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_alpha_pngs_refused_by_name(tmp_path, mode, capsys, ckpt):
    _digit_folder(tmp_path / "a", mode)
    with pytest.raises(BenchError, match=f"alpha channel.*mode {mode}"):
        data.load(f"folder:{tmp_path / 'a'}")
    code = main(["run", "--model", str(ckpt), "--dataset", f"folder:{tmp_path / 'a'}", "--suite", "robust",
                 "--out", str(tmp_path / "out")])
    assert code == 2 and "alpha channel" in _one_error_line(capsys)


def test_one_image_reader_for_data_ood_and_samples(tmp_path):
    from bench.inputs import ood_data
    from bench.pipeline import samples_command

    _digit_folder(tmp_path / "p", "P")
    ds = data.load(f"folder:{tmp_path / 'p'}")
    ood = ood_data._folder(tmp_path / "p", 1000)
    sam = samples_command.read_samples(tmp_path / "p", shape=(1, 8, 8))
    assert torch.equal(ood.sort(0).values, ds.test.x.sort(0).values)
    assert torch.equal(sam.x, ds.test.x)
    _digit_folder(tmp_path / "a", "RGBA")
    for read in (lambda: ood_data._folder(tmp_path / "a", 10), lambda: samples_command.read_samples(tmp_path / "a")):
        with pytest.raises(BenchError, match="alpha channel"):
            read()


def test_broken_symlinks_counted_and_said(tmp_path, capsys):
    _digit_folder(tmp_path / "f", "L")
    for k in range(2):
        (tmp_path / "f" / "0" / f"gone{k}.png").symlink_to(tmp_path / "nowhere" / f"{k}.png")
    ds = data.load(f"folder:{tmp_path / 'f'}")
    assert len(ds.test) == 30
    err = capsys.readouterr().err
    assert "warning:" in err and "2 broken symbolic links" in err, err
    files, broken = images.image_files(tmp_path / "f" / "0")
    assert broken == 2 and all(f.is_file() for f in files)


# --------------------------------------------------------------------------------------------
# weights: non-float tensors for float parameters; incomplete safetensors metadata


def test_int8_weights_refused_not_cast(tmp_path, capsys):
    m = tiny_model(width=32)  # the digits-cnn of --arch digits-cnn
    state = {k: v.to(torch.int8) if k == "fc.weight" else v for k, v in m.net.state_dict().items()}
    torch.save(state, tmp_path / "q.pt")
    code = main(["run", "--model", str(tmp_path / "q.pt"), "--arch", "digits-cnn", "--dataset", "digits",
                 "--suite", "calibration", "--out", str(tmp_path / "out")])
    err = _one_error_line(capsys)
    assert code == 2 and "fc.weight" in err and "torch.int8" in err, err
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize("meta", ['{"arch": "digits-cnn"}', "[1, 2]", '"digits-cnn"', '{"arch": 3, '
                                  '"num_classes": 10, "input_shape": [1, 8, 8]}'])
def test_incomplete_safetensors_metadata_one_line(tmp_path, capsys, meta):
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_file({f"model.{k}": v.contiguous() for k, v in fitted_tiny_model().net.state_dict().items()}, str(path),
              metadata={"bench": meta})
    for dataset in (["--dataset", "digits"], []):  # without --dataset the data set is read from it first
        code = main(["run", "--model", str(path), *dataset, "--out", str(tmp_path / "out")])
        err = _one_error_line(capsys)
        assert code == 2 and str(path) in err and ("metadata" in err or "does not record" in err), err


# --------------------------------------------------------------------------------------------
# py: factories


class _TupleNet(torch.nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.inner, self.kind = fitted_tiny_model().net, kind

    def forward(self, x):
        out = self.inner(x)
        return (out, out) if self.kind == "tuple" else {"logits": out}


def tuple_model():
    return _TupleNet("tuple")


def dict_model():
    return _TupleNet("dict")


def raising_factory():
    raise RuntimeError("weights server down")


def value_error_factory():
    raise ValueError("bad width")


@pytest.mark.parametrize("factory,shown", [("tuple_model", "tuple"), ("dict_model", "dict")])
def test_factory_model_returning_tuple_or_dict_names_the_type(tmp_path, capsys, factory, shown):
    code = main(["run", "--model", f"py:tests.test_reliability_faults:{factory}", "--dataset", "digits",
                 "--out", str(tmp_path / "out")])
    err = _one_error_line(capsys)
    assert code == 2 and f"returned a {shown}" in err, err


@pytest.mark.parametrize("factory,shown", [("raising_factory", "RuntimeError: weights server down"),
                                           ("value_error_factory", "ValueError: bad width")])
def test_factory_raising_says_so(tmp_path, capsys, factory, shown):
    spec = f"py:tests.test_reliability_faults:{factory}"
    code = main(["run", "--model", spec, "--dataset", "digits", "--out", str(tmp_path / "out")])
    err = _one_error_line(capsys)
    assert code == 2 and f"factory {spec!r} raised {shown}" in err, err
    assert "expected py:module:function" not in err


def test_factory_module_with_syntax_error(tmp_path, capsys, monkeypatch):
    (tmp_path / "broken_factory_mod.py").write_text("def make(:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(["run", "--model", "py:broken_factory_mod:make", "--dataset", "digits", "--out", str(tmp_path / "o")])
    err = _one_error_line(capsys)
    assert code == 2 and "SyntaxError" in err and "broken_factory_mod" in err, err


def test_bad_factory_spec_still_says_the_form(tmp_path, capsys):
    assert main(["run", "--model", "py:justone", "--dataset", "digits", "--out", str(tmp_path / "o")]) == 2
    assert "expected py:module:function" in _one_error_line(capsys)


# --------------------------------------------------------------------------------------------
# seeds


@pytest.mark.parametrize("seed", [str(10**23), str(2**63), "-1"])
def test_seed_out_of_range_one_line(tmp_path, ckpt, capsys, seed):
    code = main(["run", "--model", str(ckpt), "--suite", "robust", "--seed", seed, "--out", str(tmp_path / "o")])
    err = _one_error_line(capsys)
    assert code == 2 and "seed must be an integer in [0, 2**63)" in err, err
    code = main(["train", "--recipe", "digits-normal", "--seed", seed, "--out", str(tmp_path / "t.safetensors")])
    err = _one_error_line(capsys)
    assert code == 2 and "seed must be an integer in [0, 2**63)" in err, err


def test_largest_seed_runs(tmp_path, ckpt, use_groups):
    use_groups(FAST)
    assert main(["run", "--model", str(ckpt), "--suite", "robust", "--n-eval", "20", "--seed", str(2**63 - 1),
                 "--out", str(tmp_path / "o")]) == 0


# --------------------------------------------------------------------------------------------
# training: resume after a kill in the final evaluation; SIGINT's hint


def _recipe_file(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text('method = "normal"\ndataset = "digits"\narch = "digits-cnn"\narch_kwargs = {width = 4}\n'
                    "epochs = 2\nbatch_size = 256\nmonitor_size = 16\nfinal_eval_n = 40\ntrain_n = 256\n"
                    'optimizer = "sgd"\nlr = 0.1\neps = 0.1\n')
    return path


def test_resume_after_kill_in_final_evaluation_finishes_it(tmp_path, monkeypatch):
    from bench.train import loop

    r = small("normal")
    whole = loop.train(r, tmp_path / "whole.safetensors", show_progress=False)
    out = tmp_path / "killed.safetensors"
    real = loop.robust_accuracy

    def killed(*a, **k):
        raise SystemExit(-9)  # what kill -9 leaves: both files of the last epoch, no final metrics

    monkeypatch.setattr(loop, "robust_accuracy", killed)
    with pytest.raises(SystemExit):
        loop.train(small("normal"), out, show_progress=False)
    assert loop.resume_path(out).exists()
    monkeypatch.setattr(loop, "robust_accuracy", real)
    resumed = loop.train(small("normal"), out, resume=True, show_progress=False)
    assert not loop.resume_path(out).exists()
    timing = ("out", "sha256", "training_seconds")  # the two trainings took their own time
    assert {k: v for k, v in resumed.items() if k not in timing} == {k: v for k, v in whole.items() if k not in timing}
    got, ref = checkpoints.load(str(out)), checkpoints.load(str(tmp_path / "whole.safetensors"))
    assert got.weights_sha256 == ref.weights_sha256 and got.meta["final_metrics"] == ref.meta["final_metrics"]
    assert got.meta["final_metrics"]["n"] == 40
    with pytest.raises(BenchError, match="no resume state"):  # nothing left to continue
        loop.train(small("normal"), out, resume=True, show_progress=False)


def test_sigint_in_train_hints_resume_and_resume_finishes(tmp_path, monkeypatch, capsys):
    from bench.train import loop

    recipe, out = _recipe_file(tmp_path), tmp_path / "m.safetensors"

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "robust_accuracy", interrupted)
    assert main(["train", "--recipe", str(recipe), "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "--resume" in err and "finished metrics" not in err, err
    monkeypatch.undo()
    monkeypatch.setenv("JEAT_BENCH_CACHE", str(tmp_path / "jeat-cache"))
    assert main(["train", "--recipe", str(recipe), "--out", str(out), "--resume"]) == 0


def test_sigint_in_train_before_an_epoch_says_nothing_to_resume(tmp_path, monkeypatch, capsys):
    from bench.train import loop

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_backward", interrupted)
    out = tmp_path / "m.safetensors"
    assert main(["train", "--recipe", str(_recipe_file(tmp_path)), "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "before the first epoch" in err and "--resume" not in err, err


def _sigterm(ctx):
    os.kill(os.getpid(), signal.SIGTERM)
    return {"never": Result(1.0, n=1)}


class _ReachedTheTest(Exception):
    pass


def _test_handler(signum, frame):
    raise _ReachedTheTest  # without bench's handler SIGTERM would end pytest itself


def test_sigterm_says_what_is_kept(tmp_path, ckpt, use_groups, capsys):
    before = signal.signal(signal.SIGTERM, _test_handler)
    try:
        _sigterm_run(tmp_path, ckpt, use_groups, capsys)
        assert signal.getsignal(signal.SIGTERM) is _test_handler  # restored after main
    finally:
        signal.signal(signal.SIGTERM, before)


def _sigterm_run(tmp_path, ckpt, use_groups, capsys):
    use_groups({"seen": FAST["seen"], "term": Group("term", "calibration", ("never",), (), _sigterm)})
    out = tmp_path / "o"
    assert main(["run", "--model", str(ckpt), "--suite", "robust,calibration", "--n-eval", "20",
                 "--out", str(out)]) == 143
    err = capsys.readouterr().err
    assert "terminated" in err and "finished metrics are kept" in err, err
    assert set(json.loads((out / "results.json").read_text())["metrics"]) == {"seen_max"}


# --------------------------------------------------------------------------------------------
# full disks, read-only folders, a cache that is a file


def _full_disk(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


def _draw(ctx):
    fig = plots.new_figure(1, 1)
    path = plots.save(fig, ctx.out / "figures" / "drawn.png")
    return {"drawn": Result(1.0, n=1, details={"figure": str(path)})}


def test_disk_full_in_plots_save_one_line(tmp_path, ckpt, use_groups, monkeypatch, capsys):
    use_groups({"draw": Group("draw", "robust", ("drawn",), (), _draw)})
    monkeypatch.setattr("matplotlib.figure.Figure.savefig", _full_disk)
    out = tmp_path / "o"
    assert main(["run", "--model", str(ckpt), "--suite", "robust", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the run's progress lines
    assert err == f"error: cannot write {out / 'figures' / 'drawn.png'}: No space left on device", err


def test_unwritable_run_tables_one_line(tmp_path, ckpt, use_groups, capsys):
    from bench import metrics
    from bench.metrics import robustness  # noqa: F401  (registers accuracy)

    use_groups({"accuracy": metrics.GROUPS["accuracy"]})  # a metric Table 1 shows
    out = tmp_path / "o"
    out.mkdir()
    (out / "tables").write_text("a file where the tables folder goes")
    assert main(["run", "--model", str(ckpt), "--suite", "robust", "--n-eval", "20", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"error: cannot write {out / 'tables'}: File exists", err
    assert (out / "results.json").is_file()  # the metrics were written before the tables


def test_disk_full_in_train_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(os, "fsync", _full_disk)
    out = tmp_path / "m.safetensors"
    assert main(["train", "--recipe", str(_recipe_file(tmp_path)), "--out", str(out)]) == 2
    err = _one_error_line(capsys)
    assert err.startswith(f"error: cannot write {out}") and err.endswith(": No space left on device"), err
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


def _fake_extractor():
    return types.SimpleNamespace(name="fake", identity="fake-extractor", fid_layer="2048")


def _fake_features(u8, ext, *a, **k):
    return {ext.fid_layer: torch.arange(len(u8) * 4, dtype=torch.float32).view(len(u8), 4).sin()}


def test_ref_stats_read_only_out_fails_before_features(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("bench.engines.features.resolve_extractor", lambda *a: _fake_extractor())

    def never(*a, **k):
        raise AssertionError("features computed before the output was checked")

    monkeypatch.setattr(refstats, "reference_features", never)
    real_open = os.open

    def read_only(path, flags, *a, **k):
        if str(path).startswith(str(tmp_path / "ro")) and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *a, **k)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(os, "open", read_only)
    code = main(["ref-stats", "--dataset", "digits", "--out", str(tmp_path / "ro" / "ref.npz"), "--n-ref", "50"])
    err = _one_error_line(capsys)
    assert code == 2 and err == f"error: cannot write {tmp_path / 'ro' / 'ref.npz'}: Read-only file system", err


def test_ref_stats_disk_full_at_the_end_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("bench.engines.features.resolve_extractor", lambda *a: _fake_extractor())
    monkeypatch.setattr("bench.engines.features.extract_features", _fake_features)
    real_fsync = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path / "out")):
            _full_disk()
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    code = main(["ref-stats", "--dataset", "digits", "--out", str(tmp_path / "out" / "ref.npz"), "--n-ref", "50"])
    err = _one_error_line(capsys)
    assert code == 2 and err == f"error: cannot write {tmp_path / 'out' / 'ref.npz'}: No space left on device", err


def test_cache_that_is_a_file_warns_and_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("bench.engines.features.resolve_extractor", lambda *a: _fake_extractor())
    monkeypatch.setattr("bench.engines.features.extract_features", _fake_features)
    (tmp_path / "cachefile").write_text("not a folder")
    monkeypatch.setenv("JEAT_BENCH_CACHE", str(tmp_path / "cachefile"))
    out = tmp_path / "ref.npz"
    assert main(["ref-stats", "--dataset", "digits", "--out", str(out), "--n-ref", "50"]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and str(tmp_path / "cachefile") in err and "Traceback" not in err, err
    assert out.is_file()


def test_atomic_write_maps_os_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", _full_disk)
    with pytest.raises(BenchError, match="cannot write .*x.bin: No space left on device") as e:
        fileio.atomic_write_bytes(tmp_path / "x.bin", b"1")
    assert isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC  # still an OSError for callers
    assert list(tmp_path.iterdir()) == []
