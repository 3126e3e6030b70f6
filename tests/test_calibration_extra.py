"""Calibration beyond ECE: NLL, Brier, MCE, adaptive ECE and temperature scaling, against
torchmetrics and hand computations, and the groups end to end on a released digits model."""

import json
import math

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import multiclass_calibration_error

from bench import zoo
from bench.cli import main
from bench.metrics import calibration as cal

pytestmark = pytest.mark.usefixtures("one_thread")


def _probs(seed=0, n=300, k=5):
    g = torch.Generator().manual_seed(seed)
    z = 2.5 * torch.randn(n, k, generator=g, dtype=torch.float64)
    y = torch.where(torch.rand(n, generator=g) < 0.7, z.argmax(1), torch.randint(0, k, (n,), generator=g))
    return z, y


@pytest.mark.parametrize("bins", [10, 20])
def test_ece_and_mce_equal_torchmetrics(bins):
    z, y = _probs()
    p = torch.softmax(z, 1)
    ok = p.argmax(1) == y
    # random float64 confidences never lie exactly on a bin edge, where the two binnings differ
    l1 = multiclass_calibration_error(p, y, num_classes=5, n_bins=bins, norm="l1").item()
    mx = multiclass_calibration_error(p, y, num_classes=5, n_bins=bins, norm="max").item()
    assert cal.expected_calibration_error(p, ok, bins)[0] == pytest.approx(l1, abs=1e-6)
    assert cal.max_calibration_error(p, ok, bins) == pytest.approx(mx, abs=1e-6)


def test_nll_and_brier_by_hand():
    z = torch.tensor([[0.0, 0.0, 0.0], [math.log(2), 0.0, 0.0], [math.log(2), 0.0, 0.0]])
    y = torch.tensor([2, 1, 0])
    # p = (1/3, 1/3, 1/3): NLL ln 3, Brier (2/3)^2 + 2 (1/3)^2 = 2/3
    # p = (1/2, 1/4, 1/4), y = 1: NLL ln 4, Brier 1/4 + 9/16 + 1/16 = 7/8
    # p = (1/2, 1/4, 1/4), y = 0: NLL ln 2, Brier 1/4 + 1/16 + 1/16 = 3/8
    torch.testing.assert_close(cal.nll_per_point(z, y), torch.tensor([math.log(3), math.log(4), math.log(2)],
                                                                     dtype=torch.float64))
    torch.testing.assert_close(cal.brier_per_point(torch.softmax(z.double(), 1), y),
                               torch.tensor([2 / 3, 7 / 8, 3 / 8], dtype=torch.float64))


def test_adaptive_ece_by_hand():
    conf = np.array([0.9, 0.8, 0.6, 0.55, 0.7])
    ok = np.array([1, 0, 1, 1, 0], bool)
    # sorted: 0.55 (1), 0.6 (1), 0.7 (0) | 0.8 (0), 0.9 (1)  (array_split: 3 + 2)
    # |2 - 1.85| + |1 - 1.7| = 0.15 + 0.7 -> / 5
    ace, stats = cal.adaptive_calibration_error(conf, ok, bins=2)
    assert ace == pytest.approx(0.85 / 5, abs=1e-12)
    assert stats["count"] == [3, 2]


def test_temperature_against_a_grid_search():
    z, y = _probs(seed=1)

    def nll(t):
        return (torch.logsumexp(z / t, 1) - z.gather(1, y[:, None]).squeeze(1) / t).mean().item()

    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 20001))
    best = grid[int(np.argmin([nll(t) for t in grid]))]
    t = cal.fit_temperature(z, y)
    assert t == pytest.approx(best, rel=1e-3)
    assert nll(t) <= nll(best) + 1e-12
    assert not math.isclose(t, 1.0, rel_tol=0.05)  # the case is not trivial


def test_groups_end_to_end_on_the_released_jeat_model(tmp_path, capsys, digits):
    from bench import checkpoints

    path = zoo.models_dir() / "digits" / "digits-jeat.safetensors"
    out = tmp_path / "run"
    assert main(["run", "--model", str(path), "--suite", "calibration", "--n-eval", "60", "--out", str(out)]) == 0, \
        capsys.readouterr().err
    m = json.loads((out / "results.json").read_text())["metrics"]
    assert set(cal.EXTRA) | set(cal.EXTRA_FGSM) | {"ece", "ece_fgsm"} == set(m)
    model = checkpoints.load(str(path)).model.eval()
    n_hold = round(0.1 * len(digits.train))
    with torch.no_grad():
        z = model.logits(digits.test.x[:60]).double()
        z_hold = model.logits(digits.train.x[-n_hold:]).double()
    y = digits.test.y[:60]
    t = m["temperature"]["value"]
    assert m["temperature"]["n"] == n_hold
    assert t == pytest.approx(cal.fit_temperature(z_hold, digits.train.y[-n_hold:]), rel=1e-6)
    p, p_ts = torch.softmax(z, 1), torch.softmax(z / t, 1)
    assert m["nll"]["value"] == pytest.approx(torch.nn.functional.cross_entropy(z, y).item(), abs=1e-6)
    assert m["nll_ts"]["value"] == pytest.approx(torch.nn.functional.cross_entropy(z / t, y).item(), abs=1e-6)
    assert m["brier"]["value"] == pytest.approx(((p - torch.eye(10)[y]) ** 2).sum(1).mean().item(), abs=1e-6)
    assert m["ece_ts"]["value"] == pytest.approx(
        multiclass_calibration_error(p_ts, y, num_classes=10, n_bins=20, norm="l1").item(), abs=1e-6)
    # adaptive ECE and MCE by a hand count on the 60 points: 20 equal-mass groups of 3 by confidence
    # (ties by index), and the max gap over the non-empty equal-width (lo, hi] bins
    conf, pred = p.max(1)
    pts = sorted(zip(conf.tolist(), (pred == y).tolist(), range(60), strict=True))
    groups = [pts[i:i + 3] for i in range(0, 60, 3)]
    by_hand = sum(abs(sum(ok for _, ok, _ in g) - sum(c for c, _, _ in g)) for g in groups) / 60
    assert m["ece_adaptive"]["value"] == pytest.approx(by_hand, abs=1e-12)
    bins: dict[int, list] = {}
    for c, ok, _ in pts:
        bins.setdefault(math.ceil(c * 20) - 1, []).append((c, ok))
    gaps = [abs(sum(ok for _, ok in b) / len(b) - sum(c for c, _ in b) / len(b)) for b in bins.values()]
    assert m["mce"]["value"] == pytest.approx(max(gaps), abs=1e-12)
    assert "clean held-out" in m["nll_ts_fgsm"]["details"]["temperature_note"]
    assert (out / "figures" / "reliability_clean_ts.png").is_file()
    assert (out / "figures" / "reliability_fgsm_ts.png").is_file()
