"""Progress on the slow steps (issue 26 item 5): AutoAttack's heartbeat and its resume line."""

import re
import time

import torch

from bench.core import progress
from bench.engines import aa_adapter
from bench.engines.aa_adapter import AAConfig
from bench.runtime.execution import Execution
from tests.conftest import tiny_model


def test_heartbeat_line_and_eta_by_hand():
    now = [100.0]
    beat = progress.Heartbeat("autoattack", 1000, every=3600, say=lambda m: None)
    beat._clock = lambda: now[0]
    with beat:
        now[0] = 140.0
        assert beat.line() == "[autoattack] 0/1000 points done, 40s elapsed, ETA after the first block"
        beat.advance(250)
        now[0] = 230.0  # 250 points in 130 s: 750 more take 390 s
        assert beat.line() == "[autoattack] 250/1000 points done, 2m10s elapsed, ETA 6m30s"
        beat.advance(750)
        assert beat.line() == "[autoattack] 1000/1000 points done, 2m10s elapsed"


def test_autoattack_blocks_beat_in_a_log_and_say_they_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("JEAT_BENCH_HEARTBEAT", "0.05")
    monkeypatch.setenv("CI", "true")  # a CI log: no bar at all, the lines alone
    lines = []
    monkeypatch.setattr(progress, "say", lines.append)
    model, x, y = tiny_model(), torch.rand(30, 1, 8, 8), torch.arange(30) % 10
    aa = AAConfig(eps=0.1)

    def slow(xb, yb, state_path):
        time.sleep(0.3)
        return {"n": len(yb)}

    state_dir = tmp_path / "state"
    first = aa_adapter.autoattack_key(aa_adapter.model_digest(model), x[10:20], y[10:20], aa, 10,
                                      aa_adapter.normalisation(model))
    state_dir.mkdir()
    (state_dir / f"state-{first}.json").write_text("{}")  # block 2 was interrupted
    out = aa_adapter.run_blocks(slow, model, x, y, aa, Execution("cpu", 10), state_dir)
    assert [o["n"] for o in out] == [10, 10, 10]
    done = [int(m.group(1)) for m in (re.match(r"\[autoattack\] (\d+)/30 points done, \S+ elapsed", s)
                                      for s in lines) if m]
    assert len(done) >= 6 and done == sorted(done) and {0, 10, 20} <= set(done)  # a line every 0.05 s
    assert any("ETA" in s and s.startswith("[autoattack] 10/30") for s in lines)
    resumed = [s for s in lines if "resuming" in s]
    assert resumed == [f"[autoattack] resuming points 10-19 from an interrupted run (state-{first}.json): "
                       "the attacks it finished are not rerun"]


def test_one_block_says_so_instead_of_a_count_that_never_moves():
    """Issue 31: 20 points in one batch of 250 printed '0/20 points done, ..., ETA after the first
    block' on every beat although no count moves before all 20 finish together."""
    now = [100.0]
    beat = progress.Heartbeat("autoattack", 20, every=3600, say=lambda m: None, block=250)
    beat._clock = lambda: now[0]
    with beat:
        now[0] = 190.0
        assert beat.line() == "[autoattack] all 20 points in one block, 1m30s elapsed (they finish together)"
        beat.advance(20)
        assert beat.line() == "[autoattack] 20/20 points done, 1m30s elapsed"
    several = progress.Heartbeat("autoattack", 30, every=3600, say=lambda m: None, block=10)
    several._clock = lambda: now[0]
    with several:  # several blocks: the count and its ETA after the first
        assert several.line() == "[autoattack] 0/30 points done, 0s elapsed, ETA after the first block"


def test_autoattack_heartbeat_in_one_block_never_promises_an_eta(monkeypatch):
    monkeypatch.setenv("JEAT_BENCH_HEARTBEAT", "0.05")
    monkeypatch.setenv("CI", "true")
    lines = []
    monkeypatch.setattr(progress, "say", lines.append)
    model, x, y = tiny_model(), torch.rand(20, 1, 8, 8), torch.arange(20) % 10

    def slow(xb, yb, state_path):
        time.sleep(0.3)
        return {"n": len(yb)}

    aa_adapter.run_blocks(slow, model, x, y, AAConfig(eps=0.1), Execution("cpu", 250), None)
    assert lines and not any("ETA" in s or "0/20" in s for s in lines), lines
    assert all(s.startswith("[autoattack] all 20 points in one block") for s in lines), lines
