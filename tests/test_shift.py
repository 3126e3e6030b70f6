"""The shift suite (bench.metrics.shift) against independent computations: a hand loop of
``corrupt`` + argmax for the accuracies, a hand 20-bin ECE, NLL from scipy's logsumexp, AUROC from
scikit-learn, and the corruption errors from the recorded accuracies and a reference run."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from sklearn.metrics import roc_auc_score

from bench.cli import main
from bench.core import outcomes
from bench.engines.corruptions import available, corrupt
from bench.inputs import checkpoints, zoo

N = 40
SEV = (1, 2, 3, 4, 5)
REPO = Path(__file__).resolve().parents[1]


def _run(out: Path, *extra: str) -> int:
    return main(["run", "--model", "digits-jeat", "--suite", "shift", "--n-eval", str(N), "--device", "cpu",
                 "--out", str(out), *extra])


@pytest.fixture(scope="module", autouse=True)
def one_thread_here():
    """Tiny models and images: one thread (two were ten times slower on the shared, busy CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One digits-jeat run of the whole suite on the first 40 test points (all 14 corruptions)."""
    out = tmp_path_factory.mktemp("shift") / "run"
    assert _run(out) == 0
    return out, json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def logits(digits):
    """Hand loop: {clean or (c, k): logits} of digits-jeat and of digits-normal on the corrupted points."""
    x, y = digits.test.x[:N], digits.test.y[:N]
    models = {name: checkpoints.load(str(zoo.released_path(name))).model.eval() for name in ("jeat", "normal")}
    images = {"clean": x, **{(c, k): corrupt(x, c, k, seed=0, index=torch.arange(N))
                             for c in available(x.shape[1:]) for k in SEV}}
    with torch.no_grad():
        out = {name: {key: m.logits(v).double().numpy() for key, v in images.items()} for name, m in models.items()}
    return out, y.numpy()


@pytest.fixture(scope="module")
def digits():
    from bench.inputs import data

    return data.load("digits")


def test_every_declared_name_is_present_and_the_figure_recorded(run):
    from bench.metrics import registry, shift

    out, doc = run
    cs = available((1, 8, 8))
    assert len(cs) == 14 and "glass_blur" not in cs
    s = doc["run"]["config"]
    assert s["shift_corruptions"] == ",".join(cs)
    names = set(shift.shift_names(s)) | set(shift.ce_names(s))
    assert len(names) == 5 * 14 + 14 + 5 + 1 + 12 + 10 + 14 + 2
    assert names == {m for m in doc["metrics"] if m.startswith("shift_")}
    assert doc["run"]["suites"] == ["shift"] and registry.ORDER.index("shift") == registry.ORDER.index("ood") + 1
    assert doc["metrics"]["shift_acc_mean"]["details"]["figure"] == "figures/shift_severity.png"
    assert (out / "figures" / "shift_severity.png").stat().st_size > 1000


def test_accuracies_equal_a_hand_loop_of_corrupt_and_argmax(run, logits):
    _, doc = run
    (z, y), m = logits, doc["metrics"]
    ok = {key: v.argmax(1) == y for key, v in z["jeat"].items()}
    cs = available((1, 8, 8))
    for c in cs:
        for k in SEV:
            r = m[f"shift_acc_{c}_{k}"]
            assert r["value"] == pytest.approx(ok[(c, k)].mean(), abs=1e-12) and r["n"] == N
            assert np.array_equal(outcomes.of(r["details"]), ok[(c, k)])
        assert m[f"shift_acc_{c}"]["value"] == pytest.approx(np.mean([ok[(c, k)].mean() for k in SEV]))
    for k in SEV:
        assert m[f"shift_acc_s{k}"]["value"] == pytest.approx(np.mean([ok[(c, k)].mean() for c in cs]))
    assert m["shift_acc_mean"]["value"] == pytest.approx(np.mean([ok[(c, k)].mean() for c in cs for k in SEV]))
    assert m["shift_acc_mean"]["n"] == N * 14 * 5
    # std: over the 40 test points, each the mean of its 70 corrupted versions (not 2,800 independent images)
    per_point = np.mean([ok[(c, k)] for c in cs for k in SEV], axis=0)
    assert m["shift_acc_mean"]["std"] == pytest.approx(per_point.std(ddof=1) / np.sqrt(N), rel=1e-9)
    p = m["shift_acc_fog_3"]["value"]
    assert m["shift_acc_fog_3"]["std"] == pytest.approx(np.sqrt(p * (1 - p) / N), rel=1e-9)


def _hand_ece(conf, ok, bins=20):
    """sum_b |sum_{i in b} (ok_i - conf_i)| / N over equal-width (lo, hi] bins, a loop per bin."""
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = (conf > lo) & (conf <= hi) if b else (conf <= hi)
        total += abs(ok[inside].sum() - conf[inside].sum())
    return total / len(conf)


def test_ece_nll_and_auroc_equal_independent_computations(run, logits):
    _, doc = run
    (z, y), m = logits, doc["metrics"]
    z = z["jeat"]
    cs = available((1, 8, 8))
    eces = []
    for k in SEV:
        zk = np.concatenate([z[(c, k)] for c in cs])
        yk = np.tile(y, len(cs))
        lse = logsumexp(zk, axis=1)
        p = np.exp(zk - lse[:, None])
        conf, ok = p.max(1), p.argmax(1) == yk
        eces.append(_hand_ece(conf, ok))
        assert m[f"shift_ece_s{k}"]["value"] == pytest.approx(eces[-1], abs=1e-9)
        nll = lse - zk[np.arange(len(yk)), yk]
        assert m[f"shift_nll_s{k}"]["value"] == pytest.approx(np.mean(nll), rel=1e-9)
        per_point = nll.reshape(len(cs), N).mean(0)
        assert m[f"shift_nll_s{k}"]["std"] == pytest.approx(per_point.std(ddof=1) / np.sqrt(N), rel=1e-6)
        clean = z["clean"]
        clean_lse = logsumexp(clean, axis=1)
        labels = np.r_[np.zeros(N), np.ones(len(zk))]  # corrupted positive, ranked by the energy E(x)
        energy = -np.r_[clean_lse, lse]
        assert m[f"shift_auroc_energy_s{k}"]["value"] == pytest.approx(roc_auc_score(labels, energy), abs=1e-12)
        msp = -np.r_[np.exp(clean - clean_lse[:, None]).max(1), conf]
        assert m[f"shift_auroc_msp_s{k}"]["value"] == pytest.approx(roc_auc_score(labels, msp), abs=1e-9)
        d = m[f"shift_auroc_energy_s{k}"]["details"]
        assert (d["n_in"], d["n_out"]) == (N, N * 14)
    assert m["shift_ece_mean"]["value"] == pytest.approx(np.mean(eces), abs=1e-9)
    assert m["shift_nll_mean"]["value"] == pytest.approx(np.mean([m[f"shift_nll_s{k}"]["value"] for k in SEV]))


def _ce_by_hand(err, err_clean, ref, ref_clean, cs):
    ce = {c: sum(err[(c, k)] for k in SEV) / sum(ref[(c, k)] for k in SEV) for c in cs}
    rel = [sum(err[(c, k)] - err_clean for k in SEV) / sum(ref[(c, k)] - ref_clean for k in SEV) for c in cs]
    return ce, np.mean(list(ce.values())), np.mean(rel)


def test_ce_against_the_released_normal_model_by_hand(run, logits):
    _, doc = run
    (z, y), m = logits, doc["metrics"]
    err = {name: {key: 1 - (v.argmax(1) == y).mean() for key, v in z[name].items()} for name in z}
    cs = available((1, 8, 8))
    for c in cs:
        want = sum(err["jeat"][(c, k)] for k in SEV) / sum(err["normal"][(c, k)] for k in SEV)
        assert m[f"shift_ce_{c}"]["value"] == pytest.approx(want, rel=1e-12)
        assert m[f"shift_ce_{c}"]["details"]["reference"]["reference"] == "digits-normal"
    assert m["shift_mce"]["value"] == pytest.approx(np.mean([m[f"shift_ce_{c}"]["value"] for c in cs]))
    excess = {c: sum(err["normal"][(c, k)] - err["normal"]["clean"] for k in SEV) for c in cs}
    if all(v > 0 for v in excess.values()):
        rel = [sum(err["jeat"][(c, k)] - err["jeat"]["clean"] for k in SEV) / excess[c] for c in cs]
        assert m["shift_rmce"]["value"] == pytest.approx(np.mean(rel), rel=1e-12)
    else:  # a corruption that leaves the reference's error at its clean error: relative CE undefined
        assert m["shift_rmce"]["value"] is None and "does not exceed its clean error" in m["shift_rmce"]["reason"]


def _reference_run(root: Path, doc: dict, **run_edits) -> Path:
    """A reference run folder: this run's record with made-up accuracies 0.5 + k / 20 and accuracy 0.9."""
    ref = json.loads(json.dumps(doc))
    for name, r in ref["metrics"].items():
        if name.startswith("shift_acc_") and name[-2] == "_" and name[-1].isdigit():
            r["value"] = 0.7 - int(name[-1]) / 20
    ref["metrics"]["accuracy"] = {"value": 0.9, "std": 0.0, "n": N, "reason": None, "details": {}}
    ref["run"].update(run_edits)
    root.mkdir(parents=True, exist_ok=True)
    (root / "results.json").write_text(json.dumps(ref))
    return root


def test_ce_against_a_reference_run_by_hand(run, logits, tmp_path):
    out, doc = run
    ref = _reference_run(tmp_path / "ref", doc)
    again = tmp_path / "again"
    assert _run(again, "--shift-reference", str(ref), "--shift-corruptions", "contrast,fog") == 0
    m = json.loads((again / "results.json").read_text())["metrics"]
    cs = ("contrast", "fog")
    err = {(c, k): 1 - doc["metrics"][f"shift_acc_{c}_{k}"]["value"] for c in cs for k in SEV}
    ref_err = {(c, k): 0.3 + k / 20 for c in cs for k in SEV}
    (z, y) = logits
    err_clean = 1 - (z["jeat"]["clean"].argmax(1) == y).mean()
    ce, mce, rmce = _ce_by_hand(err, err_clean, ref_err, 0.1, cs)
    for c in cs:
        assert m[f"shift_ce_{c}"]["value"] == pytest.approx(ce[c], rel=1e-12)
    assert m["shift_mce"]["value"] == pytest.approx(mce, rel=1e-12)
    assert m["shift_rmce"]["value"] == pytest.approx(rmce, rel=1e-12)
    assert m["shift_mce"]["details"]["reference"]["kind"] == "run"
    assert set(m) == {f"shift_acc_{c}_{k}" for c in cs for k in SEV} | {f"shift_acc_{c}" for c in cs} | \
        {f"shift_acc_s{k}" for k in SEV} | {"shift_acc_mean", "shift_ece_mean", "shift_nll_mean", "shift_mce",
                                            "shift_rmce"} | {f"shift_{w}_s{k}" for w in ("ece", "nll") for k in SEV} | \
        {f"shift_auroc_{s}_s{k}" for s in ("energy", "msp") for k in SEV} | {f"shift_ce_{c}" for c in cs}


@pytest.mark.parametrize(("edit", "message"), [
    ({"seed": 1}, "seed 1 differs from this run's 0"),
    ({"data": {"train_sha256": "11" * 32, "test_sha256": "22" * 32}}, "evaluated other data"),
    ({"n": 30}, "shift_acc_fog_2 is over 30 points, this run's over 40 (n-eval differs)"),
    ({"drop": "shift_acc_fog_3"}, "holds no value of shift_acc_fog_3"),
    ({"drop": "accuracy"}, "holds no value of accuracy"),
])
def test_a_reference_that_differs_names_what(run, tmp_path, edit, message):
    from bench.core.errors import BenchError
    from bench.engines.shift_reference import from_run

    _, doc = run
    ref = _reference_run(tmp_path / "ref", doc)
    bad = json.loads((ref / "results.json").read_text())
    if "seed" in edit:
        bad["run"]["config"]["seed"] = edit["seed"]
    if "data" in edit:
        bad["run"]["data"] = edit["data"]
    if "n" in edit:
        bad["metrics"]["shift_acc_fog_2"]["n"] = edit["n"]
    if "drop" in edit:
        del bad["metrics"][edit["drop"]]
    (ref / "results.json").write_text(json.dumps(bad))
    data = [doc["run"]["data"]["train_sha256"], doc["run"]["data"]["test_sha256"]]
    if "n" in edit or "drop" in edit and edit["drop"] != "accuracy":  # the other corruptions still serve
        assert from_run(str(tmp_path / "ref"), ("contrast",), N, 0, data).kind == "run"
    with pytest.raises(BenchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_run(str(tmp_path / "ref"), ("fog",), N, 0, data)


def test_a_reference_that_differs_is_one_error_line_exit_2(run, tmp_path, capsys):
    _, doc = run
    ref = _reference_run(tmp_path / "ref", doc)
    bad = json.loads((ref / "results.json").read_text())
    bad["run"]["config"]["seed"] = 3
    (ref / "results.json").write_text(json.dumps(bad))
    capsys.readouterr()
    code = _run(tmp_path / "o", "--shift-reference", str(ref), "--shift-corruptions", "fog")
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    assert "seed 3 differs from this run's 0" in errors[0], errors[0]
    assert not (tmp_path / "o" / "figures" / "shift_severity.png").exists()  # refused before any corruption


@pytest.mark.parametrize(("value", "message"), [("fog,bogus", "unknown corruption 'bogus'"),
                                                ("glass_blur", "glass_blur is not defined on 8x8 images")])
def test_bad_corruptions_are_one_error_line(tmp_path, capsys, value, message):
    code = _run(tmp_path / "o", "--shift-corruptions", value)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and message in errors[0] and "gaussian_noise" in errors[0], err


def test_check_passes_against_itself_and_flags_one_flipped_bit(run, tmp_path, capsys):
    out, doc = run
    assert main(["check", str(out / "results.json"), "--baseline", str(out / "results.json")]) == 0
    m = doc["metrics"]["shift_acc_contrast_5"]
    bits = outcomes.of(m["details"]).copy()
    bits[0] = not bits[0]
    flipped = json.loads(json.dumps(doc))
    flipped["metrics"]["shift_acc_contrast_5"].update(value=float(bits.mean()), details={
        outcomes.KEY: outcomes.pack(bits, "correct per test point in order")})
    (tmp_path / "results.json").write_text(json.dumps(flipped))
    capsys.readouterr()
    assert main(["check", str(tmp_path / "results.json"), "--baseline", str(out / "results.json")]) != 0
    row = next(x for x in capsys.readouterr().out.splitlines() if x.split() and x.split()[0] == "shift_acc_contrast_5")
    assert "1 of 40 points flipped" in row, row


def test_a_model_that_is_not_released_has_no_reference(digits, tmp_path):
    from bench.metrics import Context, shift
    from tests.conftest import tiny_model

    s = {"seed": 0, "n_eval": 5, "shift_corruptions": "fog", "shift_reference": None, "batch_size": 50,
         "model_sha256": "00" * 32}
    ctx = Context(tiny_model(), digits, s, torch.device("cpu"), tmp_path)
    out = shift.shift_ce_group(ctx)
    assert set(out) == {"shift_ce_fog", "shift_mce", "shift_rmce"}
    assert all(r.value is None and r.reason == "no reference model: pass --shift-reference RUN" for r in out.values())


BLOCK_TORCH = """
import sys, types
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch.") or name.startswith("bench.engines"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
energy = types.ModuleType("bench.core.energy")  # register's decorator wraps through it (torch)
energy.evaluates = lambda fn: fn
sys.modules["bench.core.energy"] = energy
import bench.metrics.shift as m
print(sorted(g for g in m.__dict__ if g.endswith("_group")))
"""


def test_the_module_imports_no_torch_at_module_level():
    """Declarations only: importing the module (its decorator's own torch import stubbed) loads no
    torch and no engine."""
    r = subprocess.run([sys.executable, "-c", BLOCK_TORCH], capture_output=True, text=True, cwd=REPO,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert "shift_ce_group" in r.stdout and "shift_group" in r.stdout


def test_compare_bootstraps_a_shift_ece_as_it_does_ece(run):
    """bench compare resamples the points of a per-severity ECE (its confidences and outcomes are
    recorded), as for ``ece``, each test point with all its images (``details.per_point_of``);
    before, it took the mean of the confidences as the statistic."""
    from bench.core.results import Result
    from bench.outputs import compare

    _, doc = run
    a = Result.from_json(doc["metrics"]["shift_ece_s2"])
    conf = outcomes.values_of(a.details) * 0.9
    ok = outcomes.of(a.details)
    b = Result(_hand_ece(conf, ok), None, a.n, details={**a.details, outcomes.VALUES_KEY: outcomes.pack_values(
        conf, "shrunk")})
    t = compare.paired_test("shift_ece_s2", a, b, n_boot=50)
    assert t.test == compare.POINT_BOOTSTRAP and t.n == N and t.diff == pytest.approx(b.value - a.value)
