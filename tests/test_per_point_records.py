"""The per-point float records the groups write for `bench compare` (details.per_point): NLL,
Brier, the confidences ECE, MCE and adaptive ECE are bootstrapped from, PSNR and the Fisher
scores and terms; each recomputes its metric's value (the records add details, never change a value)."""

import numpy as np
import pytest
import torch

from bench.core import binned_calibration, outcomes
from bench.core.settings import DEFAULTS
from bench.inputs import checkpoints, zoo
from bench.metrics import Context, load_all
from bench.metrics import calibration as cal
from tests.conftest import tiny_model


def test_calibration_records_recompute_their_values(digits, tmp_path):
    model = checkpoints.load(str(zoo.models_dir() / "digits" / "digits-normal.safetensors")).model.eval()
    s = {"n_eval": 120, "ece_bins": 20, "batch_size": 250, "eps": 0.1, "norm": "Linf", "seed": 0}
    res = cal.calibration_extra_group(Context(model, digits, s, torch.device("cpu"), tmp_path))
    res.update(cal.ece_group(Context(model, digits, s, torch.device("cpu"), tmp_path)))
    for name in ("nll", "brier", "nll_ts", "brier_ts"):
        v = outcomes.values_of(res[name].details)
        assert len(v) == 120 and v.mean() == pytest.approx(res[name].value, rel=1e-6), name
    ok = outcomes.of(res["ece"].details)
    for name, stat in (("ece", lambda c: binned_calibration.expected_calibration_error(c, ok, 20)[0]),
                       ("ece_ts", lambda c: binned_calibration.expected_calibration_error(c, ok, 20)[0]),
                       ("mce", lambda c: binned_calibration.max_calibration_error(c, ok, 20)),
                       ("ece_adaptive", lambda c: binned_calibration.adaptive_calibration_error(c, ok, 20)[0])):
        conf = outcomes.values_of(res[name].details)
        assert np.array_equal(outcomes.of(res[name].details), ok)
        assert stat(conf) == pytest.approx(res[name].value, rel=1e-5, abs=1e-7), name
    assert not np.array_equal(outcomes.values_of(res["ece_ts"].details), outcomes.values_of(res["ece"].details))


def test_fisher_and_psnr_records(digits, tmp_path):
    m = tiny_model(act="softplus", width=4).requires_grad_(False)
    s = dict(DEFAULTS, eps=0.1, n_score=24, probes=4, batch_size=16)
    res = load_all()["fisher"].fn(Context(m, digits, s, torch.device("cpu"), tmp_path))
    for name in ("jfs", "mfs", "jfs_grad", "mfs_trace"):
        v = outcomes.values_of(res[name].details)
        assert len(v) == 24 and v.mean() == pytest.approx(res[name].value, rel=1e-5, abs=1e-9), name
    s = dict(DEFAULTS, eps=0.1, denoise_images=12, denoise_steps=[3], denoise_step_size=0.5, batch_size=6)
    res = load_all()["denoise"].fn(Context(tiny_model(width=4), digits, s, torch.device("cpu"), tmp_path))
    for name in ("denoise_psnr", "denoise_psnr_noisy"):
        v = outcomes.values_of(res[name].details)
        assert len(v) == 12 and v.mean() == pytest.approx(res[name].value, rel=1e-6), name


def test_auroc_records_and_the_paired_delong_test(tmp_path, figures_not_rendered):
    """Two released digits models on the same OOD points: the recorded scores give the recorded
    AUROC (scikit-learn), and bench compare tests the difference by DeLong's paired test."""
    from sklearn.metrics import roc_auc_score

    from bench.core.results import read
    from bench.outputs import compare
    from bench.pipeline import runner

    settings = {"n_eval": 25, "ood": "uniform", "ood_scores": "px,py", "pgd_steps": 2}
    for name in ("jeat", "normal"):
        runner.run(str(zoo.released_path(name)), settings=settings, suite="ood", out=tmp_path / name,
                   device="cpu", log=lambda m: None)
    comp = compare.compare_runs([tmp_path / "jeat", tmp_path / "normal"])
    tests = {t.metric: t for t in next(iter(comp.tests.values()))}
    res = read(tmp_path / "normal")
    r = res.metrics["ood_auroc_px_uniform"]
    s_in, s_out = outcomes.unpack_values(r.details["per_point_in"]), outcomes.values_of(r.details)
    assert len(s_in) == 25 and len(s_out) == 25
    assert roc_auc_score(np.r_[np.ones(25), np.zeros(25)], np.r_[s_in, s_out]) == pytest.approx(r.value, abs=1e-6)
    for name in ("ood_auroc_px_uniform", "ood_adv_auroc_py_uniform"):
        assert tests[name].test == compare.DELONG and tests[name].se is not None, name
    assert tests["ood_aupr_in_px_uniform"].test in (compare.INDEPENDENT, "")
