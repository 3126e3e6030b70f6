"""Reliability (issue 7): bad data through the CLI, kill -9 and resume, atomic writes, NaN logits
and out-of-memory errors, same seed same numbers, checkpoint provenance and no network.

Checkpoint errors, --n-gen 0, unknown suites and datasets, an unwritable --out, corrupt caches and
baselines of another schema are in test_checkpoints, test_runner and test_check."""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import metrics
from bench.cli import main
from bench.inputs import checkpoints, data
from bench.metrics import Group, Result
from bench.pipeline import runner
from tests.conftest import tiny_model

ROOT = Path(__file__).resolve().parents[1]
META = {"arch": "digits-cnn", "arch_kwargs": {"width": 4, "act": "silu"}, "num_classes": 10,
        "input_shape": [1, 8, 8], "dataset": "digits", "method": "normal",
        "threat_model": {"norm": "Linf", "eps": 0.1}}
SLOW_ENV = "BENCH_TEST_SLOW_GROUP"
THREADS = 1  # tiny models gain nothing from threads; two on a busy 2-core machine make AutoAttack 100x slower


@pytest.fixture(scope="module", autouse=True)
def few_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(n)


def fitted_tiny_model():
    """The tiny CNN with its last layer fitted to digits by ridge regression on one-hot labels:
    accuracy well above chance, so attacks flip some points and their random starts matter."""
    m = tiny_model()
    ds = data.load("digits")
    with torch.no_grad():
        f = m.net.features((ds.train.x - m.mean) / m.std).double()
        f1 = torch.cat([f, torch.ones(len(f), 1, dtype=f.dtype)], 1)
        target = torch.nn.functional.one_hot(ds.train.y, 10).double()
        w = torch.linalg.solve(f1.T @ f1 + 1e-3 * torch.eye(f1.shape[1], dtype=f.dtype), f1.T @ target)
        m.net.fc.weight.copy_(10 * w[:-1].T)
        m.net.fc.bias.copy_(10 * w[-1])
    return m.eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    checkpoints.save(path, fitted_tiny_model(), META)
    return path


def _metrics(path_or_bytes) -> dict:
    """results.json metrics without timings."""
    raw = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    d = json.loads(raw)["metrics"]
    return {k: {f: v for f, v in r.items() if f != "seconds"} for k, r in d.items()}


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# --------------------------------------------------------------------------------------------
# fake groups (registered like tests/test_runner.py does)


def _seen(ctx):
    x = ctx.data.test.subset(ctx.settings["n_eval"]).x
    return {"seen_max": Result(float(x.max()), n=len(x), details={"dtype": str(x.dtype)})}


def _const(ctx):
    return {"const": Result(1.0, n=1)}


def _slow_draw(ctx):
    if os.environ.get(SLOW_ENV):
        time.sleep(600)  # killed long before
    return {"draw": Result(torch.rand(1, generator=ctx.generator("draw")).item(), n=1)}


def kill_groups() -> dict[str, Group]:
    """Two real robustness groups, then a slow one that sleeps while SLOW_ENV is set."""
    from bench.metrics import robustness  # noqa: F401  (registers accuracy and pgd20)

    g = metrics.GROUPS
    return {"accuracy": g["accuracy"], "pgd20": g["pgd20"],
            "slow": Group("slow", "robust", ("draw",), ("seed",), _slow_draw)}


def install_kill_groups() -> None:
    """Used by the subprocess in test_kill_9_then_rerun (python -c ...)."""
    from bench.metrics import registry

    groups = kill_groups()
    registry.load_all = lambda: groups


FAST = {"seen": Group("seen", "robust", ("seen_max",), ("n_eval",), _seen),
        "const": Group("const", "calibration", ("const",), (), _const)}


# --------------------------------------------------------------------------------------------
# bad data through the CLI: exit 2, one "error: " line, no results.json


def _npz(path, x, y=None, **extra):
    if y is None:
        y = np.arange(len(x)) % 10
    np.savez(path, x=x, y=y, **extra)
    return f"npz:{path}"


def test_uint8_images_are_scaled_and_accepted(tmp_path, ckpt, use_groups, capsys):
    use_groups(FAST)
    x = np.zeros((20, 8, 8), np.uint8)
    x[:, 2:6, 3:5] = 255
    ds = _npz(tmp_path / "u8.npz", x)
    code = main(["run", "--model", str(ckpt), "--dataset", ds, "--suite", "robust", "--n-eval", "20",
                 "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    seen = json.loads((tmp_path / "out" / "results.json").read_text())["metrics"]["seen_max"]
    assert seen["value"] == 1.0 and seen["details"]["dtype"] == "torch.float32" and seen["n"] == 20


BAD_DATA = {
    "float_0_255": (lambda d: _npz(d / "f.npz", np.full((20, 8, 8), 255.0, np.float32)), [],
                    "float images must lie in [0, 1], found [255, 255] (scale them, or store uint8)"),
    "float_negative": (lambda d: _npz(d / "f.npz", np.full((20, 8, 8), -0.5, np.float32)), [],
                       "float images must lie in [0, 1], found [-0.5, -0.5]"),
    "float_nan": (lambda d: _npz(d / "f.npz", np.full((20, 8, 8), np.nan, np.float32)), [],
                  "images contain NaN or inf"),
    "rgb_for_1_channel_model": (lambda d: _npz(d / "rgb.npz", np.zeros((20, 8, 8, 3), np.uint8)), [],
                                "model takes 1-channel images but npz:"),
    "16x16_for_8x8_checkpoint": (lambda d: _npz(d / "big.npz", np.zeros((20, 16, 16), np.uint8)), [],
                                 "model was trained on (1, 8, 8) images but npz:"),
    "16x16_for_fixed_size_factory": (lambda d: _npz(d / "big.npz", np.zeros((20, 16, 16), np.uint8)),
                                     ["--model", "py:tests.test_reliability:flat_64_model"],
                                     "model does not accept npz:"),
    "empty": (lambda d: _npz(d / "empty.npz", np.zeros((0, 8, 8), np.uint8), np.zeros(0, np.int64)), [],
              "empty or not a batch of images (shape (0, 8, 8))"),
    "empty_test_split": (lambda d: _split_npz(d / "e.npz", np.zeros((20, 8, 8), np.uint8), np.zeros((0, 8, 8), np.uint8)),
                         [], ":test: empty or not a batch of images (shape (0, 8, 8))"),
}


def _split_npz(path, x_train, x_test):
    np.savez(path, x_train=x_train, y_train=np.arange(len(x_train)) % 10,
             x_test=x_test, y_test=np.arange(len(x_test)) % 10)
    return f"npz:{path}"


def flat_64_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_one_line_exit_2(tmp_path, ckpt, use_groups, capsys, case):
    use_groups(FAST)
    make, args, message = BAD_DATA[case]
    ds = make(tmp_path)
    out = tmp_path / "out"
    model = [] if "--model" in args else ["--model", str(ckpt)]  # a case may name its own model
    code = main(["run", *model, *args, "--dataset", ds, "--n-eval", "20", "--out", str(out)])
    err = _one_error_line(capsys)
    assert code == 2 and message in err, err
    assert not (out / "results.json").exists() and not (out / "cache").exists()


def test_no_metric_selection_in_cli(tmp_path, ckpt, capsys):
    # the CLI selects suites, not metrics (unknown suites: test_checkpoints); --metric is a usage error
    out = tmp_path / "out"
    code = main(["run", "--model", str(ckpt), "--metric", "bogus", "--out", str(out)])
    err = _one_error_line(capsys)
    assert code == 2 and "No such option '--metric'" in err, err
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# kill -9, resume, half-written files


RUN_ARGS = ["--suite", "robust", "--n-eval", "40", "--pgd-steps", "5", "--device", "cpu", "--seed", "1"]


def test_kill_9_then_rerun_reuses_finished_and_matches_uninterrupted(tmp_path, ckpt, use_groups, capsys):
    out = tmp_path / "killed"
    args = ["run", "--model", str(ckpt), "--out", str(out), *RUN_ARGS]
    driver = "import sys, torch, tests.test_reliability as t; torch.set_num_threads(t.THREADS); " \
             "t.install_kill_groups(); from bench.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", driver, *args], cwd=ROOT, env={**os.environ, SLOW_ENV: "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not list((out / "cache").glob("pgd20-*.json")):  # the second group finished
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "the run never finished its first groups"
            time.sleep(0.1)
        time.sleep(0.3)  # into the slow group
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    partial = json.loads((out / "results.json").read_text())  # written after every group, whole
    assert set(partial["metrics"]) == {"accuracy", "pgd20"}

    use_groups(kill_groups())
    assert main(args) == 0
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["run"]["cache"] == {"hits": ["accuracy", "pgd20"], "computed": ["slow"]}
    fresh = tmp_path / "fresh"
    assert main(["run", "--model", str(ckpt), "--out", str(fresh), *RUN_ARGS]) == 0
    assert json.loads((fresh / "results.json").read_text())["run"]["cache"]["hits"] == []
    assert _metrics(out / "results.json") == _metrics(fresh / "results.json")
    assert 0 < resumed["metrics"]["pgd20"]["value"] < resumed["metrics"]["accuracy"]["value"]


def test_half_written_results_and_temp_files_are_not_trusted(tmp_path, ckpt, use_groups):
    use_groups(FAST)
    out = tmp_path / "out"
    args = ["run", "--model", str(ckpt), "--suite", "robust,calibration", "--n-eval", "20", "--out", str(out)]
    assert main(args) == 0
    good = _metrics(out / "results.json")
    (out / "results.json").write_text('{"schema": 1, "model": {"pa')  # a kill mid-write, were it not atomic
    for f in (out / "cache").glob("*.json"):  # what a kill between write and rename leaves
        (f.parent / f".{f.name}.tmp99999").write_text('{"metrics": {"seen_max": {"value": 7')
    (out / "cache" / "const-0000.json").write_text("{")  # foreign key: never read
    assert main(args) == 0
    d = json.loads((out / "results.json").read_text())
    assert d["run"]["cache"] == {"hits": ["seen", "const"], "computed": []}
    assert _metrics(out / "results.json") == good


@pytest.mark.parametrize("target", ["cache", "results.json"])
def test_results_and_caches_written_atomically(tmp_path, ckpt, use_groups, monkeypatch, target):
    """write, fsync, rename: a kill (here os.replace failing) before the rename leaves the old file whole."""
    use_groups(FAST)
    out = tmp_path / "out"
    args = ["run", "--model", str(ckpt), "--suite", "robust,calibration", "--n-eval", "20", "--out", str(out)]
    assert main(args) == 0
    before = {p: p.read_bytes() for p in [out / "results.json", *(out / "cache").glob("*.json")]}
    events, real_replace, real_fsync = [], os.replace, os.fsync

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        if target in (Path(dst).name, Path(dst).parent.name):
            raise OSError(28, "No space left on device (simulated kill before the rename)")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="simulated"):  # --no-resume: every file is written again
        runner.run(str(ckpt), "robust,calibration", out, settings={"n_eval": 20}, resume=False, log=lambda m: None)
    kept = [p for p in before if target in (p.name, p.parent.name)]
    assert kept and all(p.read_bytes() == before[p] for p in kept)  # the old files, whole
    assert [e[0] for e in events][-2:] == ["fsync", "replace"]
    (_, synced), (_, src, dst) = events[-2:]
    assert synced == src and Path(src).parent == Path(dst).parent and Path(src).name != Path(dst).name
    assert target in (Path(dst).name, Path(dst).parent.name)
    assert not Path(src).exists()  # the failed write left no temporary file behind
    monkeypatch.setattr(os, "replace", real_replace)
    assert main(args) == 0 and _metrics(out / "results.json") == _metrics(before[out / "results.json"])


# --------------------------------------------------------------------------------------------
# faults: NaN logits and out of memory are nulls with a reason; the run goes on


class NaNRows(torch.nn.Module):
    """The tiny CNN, with NaN logits for images whose pixel sum exceeds 20 (about a third)."""

    def __init__(self):
        super().__init__()
        self.inner = tiny_model().net

    def forward(self, x):
        out = self.inner(x)
        return torch.where((x.flatten(1).sum(1) > 20)[:, None], torch.full_like(out, float("nan")), out)


def nan_model():
    return NaNRows()


def test_nan_logits_reported_with_counts_and_run_goes_on(tmp_path, use_groups, digits, capsys):
    from bench.metrics import calibration, robustness  # noqa: F401

    g = metrics.GROUPS
    use_groups({"accuracy": g["accuracy"], "ece": g["ece"], "const": FAST["const"]})
    out = tmp_path / "out"
    code = main(["run", "--model", "py:tests.test_reliability:nan_model", "--dataset", "digits",
                 "--suite", "robust,calibration", "--n-eval", "40", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    m = json.loads((out / "results.json").read_text())["metrics"]
    n_nan = int((digits.test.x[:40].flatten(1).sum(1) > 20).sum())
    assert 0 < n_nan < 40
    for name in ("accuracy", "ece"):  # accuracy would otherwise be a number; ece raised ValueError
        assert m[name]["value"] is None, m[name]
        assert m[name]["reason"] == (f"the model returned non-finite logits (NaN or inf) for {n_nan} of the 40 "
                                     "finite inputs this metric gave it")
        assert m[name]["details"] == {"non_finite_logits": n_nan, "inputs": 40}
    assert m["accuracy"]["n"] == 40
    assert m["const"]["value"] == 1.0  # the run went on


def test_out_of_memory_reported_and_retried_next_run(tmp_path, ckpt, use_groups, capsys):
    calls = []

    def oom(ctx):
        calls.append("oom")
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")

    use_groups({"oom": Group("oom", "robust", ("big1", "big2"), ("n_eval",), oom), "const": FAST["const"]})
    out = tmp_path / "out"
    args = ["run", "--model", str(ckpt), "--suite", "robust,calibration", "--n-eval", "20", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    d = json.loads((out / "results.json").read_text())
    for name in ("big1", "big2"):
        assert d["metrics"][name]["value"] is None and d["metrics"][name]["n"] == 0
        assert d["metrics"][name]["reason"] == ("out of memory: CUDA out of memory. Tried to allocate 20.00 GiB "
                                                "(simulated) (at every batch size down to 1)")
        assert d["metrics"][name]["details"]["out_of_memory_at_batch_sizes"] == HALVINGS
    assert d["metrics"]["const"]["value"] == 1.0
    shown = capsys.readouterr().out.splitlines()  # what `bench run` prints
    assert shown[0].startswith("big1   null  (out of memory: CUDA out of memory. Tried to allocate 20.00 GiB")
    assert main(args) == 0  # not cached: a transient fault is retried
    assert json.loads((out / "results.json").read_text())["run"]["cache"] == {"hits": ["const"], "computed": ["oom"]}
    assert calls == ["oom"] * (2 * len(HALVINGS))


HALVINGS = [250, 125, 62, 31, 15, 7, 3, 1]  # the default batch size, halved down to 1


def test_out_of_memory_halves_the_batch_size_and_notes_it(tmp_path, ckpt, use_groups, capsys):
    sizes = []

    def big(ctx):
        sizes.append(ctx.settings["batch_size"])
        if ctx.settings["batch_size"] > 40:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return {"big1": Result(0.5, n=20), "big2": Result(0.25, n=20)}

    use_groups({"big": Group("big", "robust", ("big1", "big2"), ("n_eval",), big)})
    out = tmp_path / "out"
    assert main(["run", "--model", str(ckpt), "--suite", "robust", "--n-eval", "20", "--out", str(out)]) == 0
    d = json.loads((out / "results.json").read_text())
    assert sizes == [250, 125, 62, 31]
    for name, value in (("big1", 0.5), ("big2", 0.25)):
        m = d["metrics"][name]
        assert m["value"] == value and m["details"] == {"out_of_memory_at_batch_sizes": [250, 125, 62],
                                                        "batch_size_used": 31}
    assert d["run"]["config"]["batch_size"] == 250  # the setting itself is unchanged


# --------------------------------------------------------------------------------------------
# determinism, provenance, no network (real robust and calibration suites)


# eps 0.3 breaks every point under AutoAttack's first attack (fast); PGD's small steps leave its
# random start deciding about half of them, so the seed matters
SUITE_ARGS = ["--suite", "robust,calibration", "--n-eval", "40", "--n-aa", "10", "--eps", "0.3",
              "--pgd-steps", "5", "--pgd-step-size", "0.005", "--device", "cpu", "--seed", "0"]


@pytest.fixture(scope="module")
def offline_run(ckpt, tmp_path_factory):
    """robust,calibration with every socket connection and name lookup refused (and recorded)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] or args)
        raise OSError("network disabled by the test")

    out = tmp_path_factory.mktemp("offline")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("connect", "connect_ex"):
            mp.setattr(socket.socket, name, refuse)
        mp.setattr(socket, "create_connection", refuse)
        mp.setattr(socket, "getaddrinfo", refuse)
        code = main(["run", "--model", str(ckpt), "--out", str(out), *SUITE_ARGS])
    return code, out, attempts


def test_checkpoint_sha256_recorded_and_no_network(offline_run, ckpt):
    code, out, attempts = offline_run
    assert code == 0 and attempts == []
    d = json.loads((out / "results.json").read_text())
    assert d["model"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    extra = ("nll", "brier", "mce", "ece_adaptive", "ece_ts", "nll_ts", "brier_ts")
    assert set(d["metrics"]) == {"accuracy", "pgd20", "pgd20_energy", "autoattack", "accuracy_aa", "pgd20_aa",
                                 "ece", "ece_fgsm", "temperature", *extra, *(f"{m}_fgsm" for m in extra)}
    assert all(r["value"] is not None for r in d["metrics"].values()), d["metrics"]


def test_same_seed_twice_identical_metrics(offline_run, ckpt, tmp_path):
    code, first, _ = offline_run
    assert code == 0
    second = tmp_path / "again"
    assert main(["run", "--model", str(ckpt), "--out", str(second), *SUITE_ARGS]) == 0
    a, b = _metrics(first / "results.json"), _metrics(second / "results.json")
    assert a == b
    assert 0 < a["pgd20"]["value"] < a["accuracy"]["value"]  # random starts flipped some points, not all
