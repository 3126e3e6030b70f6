"""Reliability (issue 35, fourth round): what a run or a check reads back is held to the rules it was
written under.  An edited FID reference cache or a hand-edited kept group of an earlier run is
recomputed, never served; settings carry their sign; a baseline's n must agree with its per-point
record; a check applies the metric modules' own declarations (no torch); a baseline's setting of the
wrong type and a baseline that is no regular file are named for what they are."""

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.core import outcomes, settings
from bench.core.errors import BenchError
from bench.metrics import Group
from tests.test_reliability import FAST, ROOT

pytestmark = pytest.mark.usefixtures("one_thread_own_cache")


def _one_error(capsys) -> str:
    return _error_line(capsys.readouterr().err)


def _error_line(err: str) -> str:
    """The one ``error:`` line of a refused command's stderr (and no traceback)."""
    lines = [x for x in err.splitlines() if x.startswith("error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------------------------
# settings carry their sign


SIGNED = {"pgd_step_size": "positive", "refine_step_size": "positive", "gen_step_size": "positive",
          "denoise_step_size": "positive", "landscape_radius": "positive", "denoise_var": "positive",
          "refine_noise": "non-negative", "gen_noise": "non-negative", "denoise_noise": "non-negative",
          "eps": "non-negative", "eps_grid": "non-negative"}


def test_every_number_setting_declares_its_sign():
    numbers = {st.name: st.sign for st in settings.SETTINGS if st.kind in ("number", "numbers")}
    assert numbers == SIGNED


@pytest.mark.parametrize("name", sorted(SIGNED))
def test_a_value_of_the_wrong_sign_is_refused(name):
    sign = SIGNED[name]
    bad = [0.0, -0.1] if sign == "positive" else [-0.1]
    for v in bad:
        with pytest.raises(BenchError, match=f"must be a {sign} number, got {v}"):
            settings.validate({name: [0.1, v] if name == "eps_grid" else v})
    settings.validate({name: [0.0, 0.05] if name == "eps_grid" else 0.05})  # in range: accepted
    if sign == "non-negative":
        settings.validate({name: [0.0] if name == "eps_grid" else 0.0})


@pytest.mark.parametrize("option", ["--pgd-step-size", "--refine-step-size", "--gen-step-size"])
@pytest.mark.parametrize("value", ["-0.1", "0"])
def test_bench_run_refuses_a_step_size_of_zero_or_below(tmp_path, capsys, use_groups, option, value):
    """The issue: --pgd-step-size -0.1 reported pgd20 = 1.0 (0.8 at the default step), no flag."""
    use_groups(FAST)
    out = tmp_path / "o"
    code = main(["run", "--model", "py:tests.test_reliability_round3:deterministic_model", "--dataset", "digits",
                 "--suite", "robust", "--n-eval", "10", "--device", "cpu", "--out", str(out), option, value])
    assert code == 2
    assert _one_error(capsys) == f"error: {option[2:]} must be a positive number, got {float(value)}"
    assert not (out / "results.json").exists()


# --------------------------------------------------------------------------------------------
# an edited FID reference cache is recomputed, not served


def test_an_edited_fid_reference_cache_is_recomputed(tmp_path, capsys):
    """The issue: 0.5 added to the cached mu and features (meta untouched) gave FID 603.0 instead of
    88.3, ``reference_cache: hit``, no warning."""
    from bench.engines import refstats
    from bench.engines import sample_quality as Q
    from tests.test_generative import digits_npz, tiny_extractors

    ext, _ = tiny_extractors()
    _, ds = digits_npz(tmp_path, 10)
    x = ds.train.x
    stats, feats, info = refstats.reference_features(x, ext, "small", "train")
    assert info["cache"] == "miss"
    path = next((tmp_path / "jeat-cache" / "fid-ref").glob("*.npz"))
    gen = ds.test.x[:20]
    honest = Q.fid_is(gen, x, ext, "small")["fid"]
    assert refstats.reference_features(x, ext, "small", "train")[2]["cache"] == "hit"  # untouched: served
    capsys.readouterr()

    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["mu"] = arrays["mu"] + 0.5
    arrays["features"] = arrays["features"] + 0.5
    np.savez(path, **arrays)  # the meta (and the digest, where one is written) untouched
    s2, f2, i2 = refstats.reference_features(x, ext, "small", "train")
    assert i2["cache"] == "miss"  # recomputed (and written again), never "hit"
    np.testing.assert_array_equal(s2["mu"], stats["mu"])  # the features' own mean, not mu + 0.5
    np.testing.assert_allclose(s2["mu"], feats.double().mean(0).numpy(), rtol=1e-5, atol=1e-6)
    assert torch.equal(f2, feats)
    err = capsys.readouterr().err
    assert f"warning: the FID reference cache {path} does not match the digest written with it" in err, err
    assert Q.fid_is(gen, x, ext, "small")["fid"] == honest  # the rewritten file is served again
    assert refstats.reference_features(x, ext, "small", "train")[2]["cache"] == "hit"


# --------------------------------------------------------------------------------------------
# a second run into the same --out keeps only what passes the cache's rules


MODEL = ["--model", "py:tests.test_reliability_round3:deterministic_model", "--dataset", "digits", "--n-eval", "60",
         "--device", "cpu"]
PROBE = Group("probe", "probe", ("seen_max",), ("n_eval",), FAST["seen"].fn)  # a fast second suite


def _union_groups():
    from bench.metrics import registry

    real = registry.load_all()
    return {"accuracy": real["accuracy"], "ece": real["ece"], "probe": PROBE}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """The robust and calibration suites (accuracy, ece) into a folder, once for the module."""
    out = tmp_path_factory.mktemp("first") / "A"
    groups = _union_groups()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JEAT_BENCH_CACHE", str(out.parent / "jeat-cache"))
        mp.setattr("bench.metrics.registry.load_all", lambda: groups)
        assert main(["run", "--suite", "robust,calibration", *MODEL, "--out", str(out)]) == 0
    return out


def _first_then_second(tmp_path, capsys, use_groups, first_run, edit):
    """A copy of the first run's folder, ``edit`` on its results.json, then the probe suite into it:
    -> (exit code, stderr, the first run's metrics, the second run's results.json)."""
    use_groups(_union_groups())
    out = tmp_path / "A"
    shutil.copytree(first_run, out)
    doc = json.loads((out / "results.json").read_text())
    first = {k: {f: v for f, v in r.items() if f != "seconds"} for k, r in doc["metrics"].items()}
    edit(doc)
    for g in doc["run"]["groups"].values():  # a determined editor writes the digest again too
        if g.get("digest") == "recompute":
            text = json.dumps({m: doc["metrics"][m] for m in g["metrics"]}, sort_keys=True)
            g["digest"] = hashlib.sha256(text.encode()).hexdigest()
    (out / "results.json").write_text(json.dumps(doc))
    capsys.readouterr()
    code = main(["run", "--suite", "probe", *MODEL, "--out", str(out)])
    return code, capsys.readouterr().err, first, json.loads((out / "results.json").read_text())


def _set(metric, field, value, group=None, digest="stale"):
    def edit(doc):
        doc["metrics"][metric][field] = value
        rec = doc["run"]["groups"][group or metric]
        if digest == "recompute":
            rec["digest"] = "recompute"
    return edit


def _no_digest(doc):
    doc["run"]["groups"]["accuracy"].pop("digest", None)
    doc["metrics"]["accuracy"]["value"] = 0.5  # an edit the per-point record would tell, but: no digest


@pytest.mark.parametrize("edit, group, why", [
    (_set("ece", "value", 0.0001), "ece", "its metrics do not match the digest written with them (edited by hand?)"),
    (_set("ece", "value", 7.0, digest="recompute"), "ece", "metric ece: value 7.0 is not a finite number in [0.0, 1.0]"),
    (_set("ece", "n", "60", digest="recompute"), "ece", "metric ece: n '60' is not a count"),
    (_set("accuracy", "value", 0.5, digest="recompute"), "accuracy",
     "metric accuracy: value 0.5 disagrees with its per-point record"),
    (_no_digest, "accuracy", "no digest of its metrics is recorded"),
], ids=["value-digest", "bounds", "type", "per-point-record", "no-digest"])
def test_a_kept_group_edited_by_hand_is_recomputed(tmp_path, capsys, use_groups, first_run, edit, group, why):
    """The issue: ece set to 0.0001 and ece_fgsm to 7.0 in A/results.json were kept by a landscape
    run into A (exit 0), and ``bench table`` printed 700.00."""
    code, err, first, doc = _first_then_second(tmp_path, capsys, use_groups, first_run, edit)
    assert code == 0, err
    line = f"warning: --out {tmp_path / 'A'}: the earlier results of group {group} are recomputed: {why}"
    warnings = [x for x in err.splitlines() if "are recomputed" in x]
    assert len(warnings) == 1 and warnings[0].startswith(line), err
    for m in ("accuracy", "ece"):  # every number is the first run's, the edited one recomputed
        assert {f: v for f, v in doc["metrics"][m].items() if f != "seconds"} == first[m], m
    assert doc["run"]["cache"]["hits"] == [group]  # computed again: here from the per-group cache
    assert doc["run"]["cache"]["kept"] == [{"accuracy": "ece", "ece": "accuracy"}[group]]
    assert doc["run"]["groups"][group].get("kept") is None and doc["run"]["groups"][group]["digest"]
    assert "seen_max" in doc["metrics"]
    assert sorted(doc["run"]["suites"]) == ["calibration", "probe", "robust"]


def test_an_untouched_kept_group_is_kept(tmp_path, capsys, use_groups, first_run):
    code, err, first, doc = _first_then_second(tmp_path, capsys, use_groups, first_run, lambda doc: None)
    assert code == 0 and "are recomputed" not in err, err
    assert doc["run"]["cache"]["kept"] == ["accuracy", "ece"] and doc["run"]["cache"]["hits"] == []
    assert {k: {f: v for f, v in r.items() if f != "seconds"} for k, r in doc["metrics"].items()
            if k != "seen_max"} == first


# --------------------------------------------------------------------------------------------
# bench check holds a baseline's n to its own per-point record


def _drop(record, k):
    """``record`` with k of its points fooled now (value and bits alike)."""
    from tests.test_check_paired import flip

    return flip(record, k, "robust under PGD-20")


def _bits(record, bits):
    return dict(record, details={outcomes.KEY: dict(record["details"][outcomes.KEY], bits=bits)})


@pytest.mark.parametrize("edit, message", [
    (lambda r: dict(r, n=1), "metric pgd20: n 1 disagrees with its per-point record of 450 points: edited by hand?"),
    (lambda r: dict(r, n=440), "metric pgd20: n 440 disagrees with its per-point record of 450 points"),
    (lambda r: _bits(r, "zz" + r["details"][outcomes.KEY]["bits"][2:]),
     "metric pgd20: its per-point record does not parse (bits not hex, or not n = 450 bits long)"),
    (lambda r: _bits(r, r["details"][outcomes.KEY]["bits"][:-2]),
     "metric pgd20: its per-point record does not parse"),
], ids=["n-1", "n-short", "not-hex", "short-bits"])
@pytest.mark.parametrize("mode", [[], ["--statistical"]])
def test_a_baseline_whose_n_or_bits_disagree_is_refused(tmp_path, capsys, edit, message, mode):
    """The issue: pgd20.n edited to 1 turned a 10-point drop into "not checkable" (exit 0) under
    --statistical; n 40 where the bits hold 50 passed; bits that do not parse fell back silently."""
    from tests.test_check_paired import check, metrics

    base_m, cur_m = metrics(), metrics()
    base_m["pgd20"] = edit(base_m["pgd20"])
    cur_m["pgd20"] = _drop(cur_m["pgd20"], 45)  # 10 points of 450
    code, out, err = check(tmp_path, cur_m, *mode, base_m=base_m, capsys=capsys)
    assert code == 2 and out == "", out + err
    assert message in _error_line(err), err


def test_an_honest_baseline_still_fails_the_drop(tmp_path, capsys):
    from tests.test_check_paired import check, metrics

    cur_m = metrics()
    cur_m["pgd20"] = _drop(cur_m["pgd20"], 45)
    for mode in ([], ["--statistical"]):
        code, out, err = check(tmp_path, cur_m, *mode, capsys=capsys)
        assert code == 1 and "pgd20" in out and "regression" in out.lower(), out + err


# --------------------------------------------------------------------------------------------
# the facts bench check applies are the metric modules' own declarations (no copy to edit)


CHECK_IN_A_FRESH_PROCESS = """
import sys
from bench.cli import main
code = main(["check", sys.argv[1], "--baseline", sys.argv[2], "--statistical"])
print("torch imported:", "torch" in sys.modules)
sys.exit(code)
"""


def test_a_check_reads_the_declared_tolerance_without_torch(tmp_path):
    """The issue: ece's tolerance edited to 5.0 in an installed copy of the declarations (the old
    catalog.json) let a 50 % change pass as "ok".  The facts are now read from the metric module
    itself, in a fresh process without torch: a 50 % rise of ece is a regression at 3 SE."""
    import os
    import subprocess
    import sys

    from tests.test_check_paired import metrics, write

    base_m, cur_m = metrics(), metrics()
    base_m["ece"]["value"], cur_m["ece"]["value"] = 0.30, 0.45  # 3 SE of ECE at n = 450: 0.1
    base = write(tmp_path, "base", base_m) / "results.json"
    cur = write(tmp_path, "cur", cur_m)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", CHECK_IN_A_FRESH_PROCESS, str(cur), str(base)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 1 and "torch imported: False" in proc.stdout, proc.stdout + proc.stderr
    ece = next(x for x in proc.stdout.splitlines() if x.split() and x.split()[0] == "ece")
    assert "regress" in ece.lower(), ece


# --------------------------------------------------------------------------------------------
# a baseline's setting of the wrong type, a baseline that is no regular file


@pytest.mark.parametrize("key, value, message", [
    ("eps", "0.1", "run.config.eps is the text '0.1', but eps takes a number: the types differ"),
    ("n_eval", 360.0, "run.config.n_eval is the number 360.0, but n_eval takes an integer: the types differ"),
    ("gen_clamp", 1, "run.config.gen_clamp is the integer 1, but gen_clamp takes true or false: the types differ"),
    ("denoise_steps", "10,50", "run.config.denoise_steps is the text '10,50', but denoise_steps takes a list: "
     "the types differ"),
])
def test_a_baseline_setting_of_another_type_is_named(tmp_path, capsys, key, value, message):
    """The issue: a baseline whose config.eps is the string "0.1" was refused as "baseline 0.1,
    current 0.1", which does not say what differs."""
    from tests.test_check_paired import check, metrics, write

    base = write(tmp_path, "base", metrics())
    doc = json.loads((base / "results.json").read_text())
    doc["run"]["config"][key] = value
    (base / "results.json").write_text(json.dumps(doc))
    cur = write(tmp_path, "cur", metrics())
    assert main(["check", str(cur), "--baseline", str(base / "results.json")]) == 2
    assert _one_error(capsys) == f"error: {base / 'results.json'}: {message}"
    code, out, err = check(tmp_path / "again", metrics(), capsys=capsys)  # the same pair, untouched: compared
    assert code == 0, out + err


def test_a_baseline_that_is_no_regular_file_or_empty_is_named(tmp_path, capsys):
    """The issue: ``--baseline /dev/null`` said "file not found"."""
    from tests.test_check_paired import metrics, write

    cur = write(tmp_path, "cur", metrics())
    assert main(["check", str(cur), "--baseline", "/dev/null"]) == 2
    assert _one_error(capsys) == "error: baseline /dev/null: not a regular file (a character device)"
    empty = tmp_path / "empty.json"
    empty.write_text("")
    assert main(["check", str(cur), "--baseline", str(empty)]) == 2
    assert _one_error(capsys) == f"error: {empty}: the file is empty (no JSON in it)"
    assert main(["check", str(cur), "--baseline", str(tmp_path / "none.json")]) == 2
    assert _one_error(capsys) == f"error: baseline {tmp_path / 'none.json'}: no such file or directory"


def test_a_derived_setting_on_its_bound_is_not_refused(tmp_path, capsys):
    """At eps 0 the derived PGD step is 0 (eps / 4): a recorded value is judged by its type only."""
    from tests.test_check_paired import metrics, write
    from tests.test_tables import CONFIG

    config = dict(CONFIG, eps=0.0, pgd_step_size=0.0, landscape_radius=0.0)
    base = write(tmp_path, "base", metrics(), config=config)
    cur = write(tmp_path, "cur", metrics(), config=config)
    assert main(["check", str(cur), "--baseline", str(base / "results.json")]) == 0, capsys.readouterr()
