
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassCalibrationError
from torchmetrics.functional.classification import multiclass_calibration_error

from bench.core.settings import DEFAULTS
from bench.engines import plots
from bench.metrics import Context, load_all
from bench.metrics.calibration import expected_calibration_error
from tests.conftest import trained_model

pytestmark = pytest.mark.usefixtures("one_thread")




def test_ece_by_hand():
    conf = [0.12, 0.18, 0.33, 0.61, 0.62, 0.97, 0.99, 0.96]
    correct = [0, 1, 0, 1, 0, 1, 1, 0]
    # 20 bins of width 0.05, (lo, hi]:
    #   (0.10, 0.15]: 0.12 wrong          n=1 acc 0   conf 0.12   |gap| 0.12
    #   (0.15, 0.20]: 0.18 right          n=1 acc 1   conf 0.18   |gap| 0.82
    #   (0.30, 0.35]: 0.33 wrong          n=1 acc 0   conf 0.33   |gap| 0.33
    #   (0.60, 0.65]: 0.61 right, 0.62 wrong   n=2 acc 1/2 conf 0.615 |gap| 0.115
    #   (0.95, 1.00]: 0.97, 0.99 right, 0.96 wrong   n=3 acc 2/3 conf 2.92/3 |gap| 0.92/3
    # ECE = (1*0.12 + 1*0.82 + 1*0.33 + 2*0.115 + 3*0.92/3) / 8 = 2.42 / 8 = 0.3025
    ece, stats = expected_calibration_error(np.array(conf), np.array(correct, dtype=bool), bins=20)
    assert ece == pytest.approx(0.3025, abs=1e-12)
    assert stats["count"] == [0, 0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 3]
    assert stats["accuracy"][12] == 0.5 and stats["confidence"][12] == pytest.approx(0.615)
    assert stats["accuracy"][19] == pytest.approx(2 / 3) and stats["confidence"][19] == pytest.approx(2.92 / 3)
    assert stats["accuracy"][0] is None and stats["confidence"][0] is None
    assert stats["n"] == 8 and stats["avg_accuracy"] == 0.5 and stats["avg_confidence"] == pytest.approx(4.78 / 8)
    assert len(stats["edges"]) == 21 and stats["edges"][1] == pytest.approx(0.05)
    # probabilities (N, K) give the same: the row maximum is the confidence
    probs = torch.tensor([[c, 1 - c] for c in conf[3:]])  # all >= 0.5
    ece_p, _ = expected_calibration_error(probs, torch.tensor(correct[3:]), 20)
    ece_c, _ = expected_calibration_error(torch.tensor(conf[3:]), torch.tensor(correct[3:]), 20)
    assert ece_p == ece_c


def test_bins_are_closed_on_the_right():
    ece, stats = expected_calibration_error(np.array([0.0, 0.5, 0.5000001, 1.0]), np.array([1, 1, 1, 1]), 20)
    assert stats["count"][0] == 1  # 0 joins the first bin
    assert stats["count"][9] == 1  # 0.5 in (0.45, 0.50]
    assert stats["count"][10] == 1  # just above 0.5 in (0.50, 0.55]
    assert stats["count"][19] == 1  # 1.0 in (0.95, 1.00]
    assert ece == pytest.approx((1.0 + 0.5 + (1 - 0.5000001) + 0.0) / 4)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="softmax"):
        expected_calibration_error(torch.tensor([[2.0, -1.0]]), torch.tensor([True]))
    with pytest.raises(ValueError):
        expected_calibration_error(torch.tensor([0.5, 0.6]), torch.tensor([True]))
    with pytest.raises(ValueError):
        expected_calibration_error(torch.tensor([0.5]), torch.tensor([2]))
    with pytest.raises(ValueError):
        expected_calibration_error(torch.tensor([]), torch.tensor([], dtype=torch.bool))


def test_ece_agrees_with_torchmetrics(digits):
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 10, (2000,), generator=g)
    logits = 3 * torch.randn(2000, 10, generator=g) + 4 * F.one_hot(target, 10) * torch.rand(2000, 1, generator=g)
    m = trained_model()
    cases = [torch.softmax(logits, 1)]
    with torch.no_grad():
        cases.append(torch.softmax(m.logits(digits.test.x), 1))
    targets = [target, digits.test.y]
    for probs, t in zip(cases, targets, strict=True):
        assert probs.max().item() < 1  # no confidence exactly 1 (torchmetrics bins those apart)
        ref = MulticlassCalibrationError(num_classes=10, n_bins=20, norm="l1")(probs, t).item()
        ours, _ = expected_calibration_error(probs, probs.argmax(1) == t, 20)
        assert ours == pytest.approx(ref, abs=1e-6)
        assert ours > 0.005


def _ctx(model, ds, tmp_path, **settings):
    s = dict(DEFAULTS, eps=0.1, pgd_step_size=0.025, n_eval=200, batch_size=64)
    s.update(settings)
    return Context(model, ds, s, torch.device("cpu"), tmp_path)


def test_calibration_groups_write_figures_and_bins(digits, tmp_path):
    groups = load_all()
    assert groups["ece"].suite == "calibration" and "eps" not in groups["ece"].settings
    assert {"eps", "ece_bins", "n_eval"} <= set(groups["ece_fgsm"].settings)
    m = trained_model()
    ctx = _ctx(m, digits, tmp_path)
    clean = groups["ece"].fn(ctx)["ece"]
    adv = groups["ece_fgsm"].fn(ctx)["ece_fgsm"]
    with torch.no_grad():
        p = torch.softmax(m.logits(digits.test.x[:200]).double(), 1)
    assert p.max().item() < 1  # torchmetrics bins a confidence of exactly 1 apart
    expected = multiclass_calibration_error(p, digits.test.y[:200], num_classes=10, n_bins=20, norm="l1").item()
    assert clean.value == pytest.approx(expected, abs=1e-6) and clean.n == 200 and clean.std is None
    # and by hand from the recorded bins: sum over bins of n_b |acc_b - conf_b| / n
    bins = clean.details["bins"]
    by_bins = sum(c * abs(a - f) for c, a, f in zip(bins["count"], bins["accuracy"], bins["confidence"], strict=True)
                  if c) / 200
    assert clean.value == pytest.approx(by_bins, abs=1e-12)
    assert adv.value != clean.value and adv.n == 200
    assert adv.details["threat_model"]["eps"] == 0.1 and adv.details["threat_model"]["max_linf"] <= 0.1 + 1e-6
    assert adv.details["bins"]["avg_accuracy"] < clean.details["bins"]["avg_accuracy"] - 0.1  # FGSM hurts
    for r, name in ((clean, "reliability_clean.png"), (adv, "reliability_fgsm.png")):
        assert r.details["figure"] == f"figures/{name}"
        png = tmp_path / "figures" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert sum(r.details["bins"]["count"]) == 200 and len(r.details["bins"]["count"]) == 20
    r10 = groups["ece"].fn(_ctx(m, digits, tmp_path, ece_bins=10))["ece"]
    assert len(r10.details["bins"]["count"]) == 10


def test_reliability_diagram_with_empty_bins(tmp_path):
    _, stats = expected_calibration_error(torch.tensor([0.91, 0.93, 0.97, 0.55]), torch.tensor([1, 0, 1, 1]), 20)
    path = plots.reliability_diagram(stats, tmp_path / "sub" / "r.png", "test")
    assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"
