"""`tools/make_baselines.py --add NAME` on a tiny fake case: a baseline made of `--suite calibration`
on digits, then `--add score` (the fisher group): every old key, value and line kept, the new
metrics equal to a run of the case with both suites, and `bench check --exact --strict` failing
on the old baseline (a metric it lacks) and passing on the merged one."""

import contextlib
import difflib
import io
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bench.cli import main
from bench.core.results import json_text
from tools.baseline_add import AddError, cases_with, merged, only_added, resolve

ARGS = ["--n-eval", "20", "--n-score", "8"]
CASES = {"tiny": {"model": "digits-normal", "suites": "calibration,score", "args": ARGS},
         "other": {"model": "digits-normal", "suites": "calibration", "args": ARGS}}


def _run(suites: str, out: Path) -> dict:
    """The cases' command (tools/make_baselines.command) with other suites, in this process."""
    assert main(["run", "--model", "digits-normal", "--suite", suites, *ARGS, "--seed", "0", "--device", "cpu",
                 "--out", str(out), "--no-resume"]) == 0
    return json.loads((out / "results.json").read_text())


def _tool(mp: pytest.MonkeyPatch, args: list[str]) -> SimpleNamespace:
    """tools/make_baselines.py with these arguments, its main() in this process (its runs are its
    own subprocesses, as ever): -> SimpleNamespace(returncode, stdout, stderr)."""
    from tools import make_baselines

    mp.setattr(sys, "argv", ["make_baselines.py", *args])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = make_baselines.main()
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The old baselines (calibration only; tiny's config without fisher_space, as if made before the
    setting), a run of tiny with both suites, and the tool's --add score into OUT; one thread, as
    the tool's runs (the same platform record)."""
    from threadpoolctl import threadpool_limits

    tmp = tmp_path_factory.mktemp("add")
    mp = pytest.MonkeyPatch()
    mp.setenv("JEAT_BENCH_CACHE", str(tmp / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    blas = threadpool_limits(1, user_api="blas")
    try:
        base = _run("calibration", tmp / "base")
        del base["run"]["config"]["fisher_space"]
        folder = tmp / "baselines"
        folder.mkdir()
        (folder / "cases.json").write_text(json.dumps({"cases": CASES}))
        for case in CASES:
            (folder / f"{case}.json").write_text(json_text(base))
        full = _run("calibration,score", tmp / "full")
        proc = _tool(mp, ["--add", "score", "--baselines", str(folder), "--out", str(tmp / "out"), "--jobs", "1"])
    finally:
        mp.undo()
        blas.restore_original_limits()
        torch.set_num_threads(threads)
    return tmp, base, full, proc


def test_add_merges_only_additions_equal_to_a_full_run(made):
    tmp, base, full, proc = made
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "tiny.json: added 6 metric(s)" in proc.stdout and "setting(s) fisher_space" in proc.stdout
    assert "other" not in proc.stdout and not (tmp / "out" / "other.json").exists()  # its suites lack score
    old_text = (tmp / "baselines" / "tiny.json").read_text()
    assert json.loads(old_text) == base  # --out: the baseline itself is untouched
    new_text = (tmp / "out" / "tiny.json").read_text()
    new = json.loads(new_text)
    # every old value as it was ...
    assert new["model"] == base["model"] and new["schema"] == base["schema"]
    assert {m: new["metrics"][m] for m in base["metrics"]} == base["metrics"]
    for key, value in base["run"].items():
        if isinstance(value, dict):
            assert {k: new["run"][key][k] for k in value} == value, key
        else:
            assert new["run"][key] == value, key
    # ... and every old line: the diff removes no line but to add a comma
    old_lines, new_lines = old_text.splitlines(), new_text.splitlines()
    removed = [d[2:] for d in difflib.ndiff(old_lines, new_lines) if d.startswith("- ")]
    assert all(line + "," in new_lines for line in removed), removed
    # the new metrics are the fisher group's, equal to the run of the case with both suites
    fisher = full["run"]["groups"]["fisher"]["metrics"]
    assert sorted(set(new["metrics"]) - set(base["metrics"])) == sorted(fisher) and len(fisher) == 6
    for m in fisher:
        got, want = new["metrics"][m], full["metrics"][m]
        assert (got["value"], got["std"], got["n"], got.get("details")) == \
            (want["value"], want["std"], want["n"], want.get("details")), m
    added = json.loads((tmp / "out" / "tiny.add-score" / "results.json").read_text())["run"]
    assert new["run"]["groups"]["fisher"]["platform"] == added["platform"]
    assert new["run"]["code_sha256"]["fisher"] == full["run"]["code_sha256"]["fisher"]
    assert new["run"]["config"]["fisher_space"] == full["run"]["config"]["fisher_space"]
    assert set(new["run"]["config"]) - set(base["run"]["config"]) == {"fisher_space"}


def test_strict_check_fails_the_old_baseline_and_passes_the_merged_one(made, capsys):
    tmp, base, full, _ = made
    capsys.readouterr()
    assert main(["check", str(tmp / "full"), "--baseline", str(tmp / "baselines" / "tiny.json"),
                 "--exact", "--strict"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^jfs .*not in the baseline", out, re.M), out
    assert main(["check", str(tmp / "full"), "--baseline", str(tmp / "out" / "tiny.json"), "--exact", "--strict"]) == 0
    out = capsys.readouterr().out
    n = len(full["metrics"])
    assert f"{n} ok, 0 regression(s), 0 not checkable, 0 missing (exact mode, strict)" in out, out
    # on the old baseline's own machine (here: its platform made another), the added group is judged
    # by the platform it was computed on: exact, the old metrics by the paired rules
    doc = json.loads((tmp / "out" / "tiny.json").read_text())
    doc["run"]["platform"]["cpu_model"] = "another"
    (tmp / "elsewhere.json").write_text(json_text(doc))
    assert main(["check", str(tmp / "full"), "--baseline", str(tmp / "elsewhere.json"), "--exact", "--strict"]) == 0
    out = capsys.readouterr().out
    assert "(exact/portable mode, strict)" in out, out
    assert f"so {len(base['metrics'])} metric(s) are compared by the portable (paired) rules" in out, out


def test_another_evaluation_is_refused_and_a_changed_value_caught(made):
    tmp, base, _, _ = made
    run = json.loads((tmp / "out" / "tiny.add-score" / "results.json").read_text())
    other = json.loads(json.dumps(base))
    other["run"]["config"]["n_score"] = 16
    with pytest.raises(AddError, match=r"run\.config\.n_score \(baseline 16, now 8\)"):
        merged(other, run, ["fisher"])
    doc, metrics, keys = merged(base, run, ["fisher"])
    only_added(base, doc)
    doc["metrics"]["ece"]["value"] += 1e-12
    with pytest.raises(AssertionError, match="metrics.ece.value: changed"):
        only_added(base, doc)
    assert merged(doc, run, ["fisher"])[1] == []  # already there: nothing added again


def test_names_and_cases():
    assert resolve("score") == ("score", ["fisher"]) and resolve("ece") == ("calibration", ["ece"])
    with pytest.raises(AddError, match="no suite or group"):
        resolve("nosuch")
    cases = {**CASES, "every": {"model": "m", "suites": "all", "args": []}}
    assert cases_with(cases, "score", []) == ["tiny", "every"]
    with pytest.raises(AddError, match="no case of other runs the suite score"):
        cases_with(cases, "score", ["other"])
