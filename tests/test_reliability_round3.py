"""Reliability (issue 27, third round): a stochastic model is detected once per run (a warning line
and ``run.model_checks`` in results.json) and its failed robustness checks are nulls with their
reason, not a traceback; two runs into one --out are kept apart by a lock file."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from bench.cli import main
from bench.core.errors import BenchError
from bench.metrics import Group, registry
from bench.pipeline import outlock
from tests.test_reliability import FAST, fitted_tiny_model

WARNING = "warning: the model is not deterministic: two forward passes of the same images differ by up to"


pytestmark = pytest.mark.usefixtures("one_thread_own_cache")


# --------------------------------------------------------------------------------------------
# a stochastic model: noise in forward


class _NoisyNet(torch.nn.Module):
    """The fitted tiny CNN with large Gaussian noise on its logits at every call, in eval mode too
    (a randomised defence, or dropout left on)."""

    def __init__(self):
        super().__init__()
        self.inner = fitted_tiny_model().net

    def forward(self, x):
        out = self.inner(x)
        return out + 10.0 * torch.randn_like(out)


def noisy_model():
    return _NoisyNet()


def deterministic_model():
    return fitted_tiny_model().net


def _no_autoattack(use_groups):
    """The real robust and calibration groups without AutoAttack (slow, and not needed here)."""
    groups = {k: g for k, g in registry.load_all().items()
              if g.suite in ("robust", "calibration") and k != "autoattack"}
    return use_groups(groups)


ARGS = ["--suite", "calibration,robust", "--dataset", "digits", "--n-eval", "100", "--pgd-steps", "2",
        "--device", "cpu", "--seed", "0"]


def test_stochastic_model_warns_once_records_and_gives_nulls(tmp_path, capsys, use_groups):
    _no_autoattack(use_groups)
    out = tmp_path / "o"
    code = main(["run", "--model", "py:tests.test_reliability_round3:noisy_model", *ARGS, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "Traceback" not in err
    assert err.count(WARNING) == 1, err
    line = next(x for x in err.splitlines() if x.startswith(WARNING))
    assert line.endswith("(dropout in training mode, or a randomised defence?); attacks without EOT "
                         "overestimate its robustness"), line
    doc = json.loads((out / "results.json").read_text())
    checks = doc["run"]["model_checks"]
    assert checks["deterministic"] is False and checks["max_logit_difference"] > 1.0
    failed = [m for m in ("pgd20", "pgd20_energy") if doc["metrics"][m]["value"] is None]
    assert failed, doc["metrics"]
    for m in failed:
        assert "exceeds clean accuracy" in doc["metrics"][m]["reason"]
    assert doc["metrics"]["ece"]["value"] is not None  # the other suites still run


def test_deterministic_model_records_true_and_no_warning(tmp_path, capsys, use_groups):
    _no_autoattack(use_groups)
    out = tmp_path / "o"
    code = main(["run", "--model", "py:tests.test_reliability_round3:deterministic_model", *ARGS,
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "not deterministic" not in err
    checks = json.loads((out / "results.json").read_text())["run"]["model_checks"]
    assert checks == {"deterministic": True, "max_logit_difference": 0.0, "n": checks["n"]} and checks["n"] > 0


# --------------------------------------------------------------------------------------------
# two runs into one --out: a lock file


def _lock(out, pid, started="2026-12-03T10:00:00+00:00"):
    out.mkdir(parents=True, exist_ok=True)
    (out / ".bench.lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": started,
                                                  "command": "bench run --suite robust"}))


FAST_ARGS = ["--model", "py:tests.test_reliability_round3:deterministic_model", "--dataset", "digits",
             "--suite", "robust", "--n-eval", "20"]


def test_live_lock_refuses_a_second_run(tmp_path, capsys, use_groups):
    use_groups(FAST)
    out = tmp_path / "o"
    _lock(out, os.getpid())  # this process is alive: another bench run is using OUT
    assert main(["run", *FAST_ARGS, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {out} is in use by another bench run (pid {os.getpid()}, started "
                   "2026-12-03T10:00:00+00:00); wait for it or use another --out"), err
    assert json.loads((out / ".bench.lock").read_text())["pid"] == os.getpid()  # the other run's lock is kept
    assert not (out / "results.json").exists()


def test_stale_lock_is_taken_over_with_a_note(tmp_path, capsys, use_groups):
    use_groups(FAST)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # exited and reaped: its pid is dead on this host
    out = tmp_path / "o"
    _lock(out, gone.pid)
    assert main(["run", *FAST_ARGS, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"pid {gone.pid}" in err and "taken over" in err, err
    assert not (out / ".bench.lock").exists()
    assert (out / "results.json").is_file()


def _fails(ctx):
    raise BenchError("the group failed on purpose")


def test_no_lock_left_after_a_run_or_an_error(tmp_path, capsys, use_groups):
    use_groups(FAST)
    out = tmp_path / "o"
    assert main(["run", *FAST_ARGS, "--out", str(out)]) == 0
    assert not (out / ".bench.lock").exists()
    use_groups({"fails": Group("fails", "robust", ("never",), (), _fails)})
    assert main(["run", *FAST_ARGS, "--out", str(out)]) == 2
    assert "failed on purpose" in capsys.readouterr().err
    assert not (out / ".bench.lock").exists()


def _interrupted(ctx):
    raise KeyboardInterrupt


def test_no_lock_left_after_an_interrupt(tmp_path, capsys, use_groups):
    use_groups({"interrupted": Group("interrupted", "robust", ("never",), (), _interrupted)})
    out = tmp_path / "o"
    assert main(["run", *FAST_ARGS, "--out", str(out)]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not (out / ".bench.lock").exists()


def test_lock_is_atomic_and_released(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    with outlock.held(out, command="bench run"):
        rec = json.loads((out / ".bench.lock").read_text())
        assert rec["pid"] == os.getpid() and rec["host"] == socket.gethostname() and rec["command"] == "bench run"
        with pytest.raises(BenchError, match="is in use by another bench run"):
            with outlock.held(out):
                pass
        assert (out / ".bench.lock").exists()
    assert not (out / ".bench.lock").exists()
