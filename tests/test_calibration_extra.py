"""Calibration beyond ECE: NLL, Brier, MCE, adaptive ECE and temperature scaling, against
torchmetrics and hand computations, and the groups end to end on a released digits model."""

import json
import math

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import multiclass_calibration_error

from bench.cli import main
from bench.engines import calibration_fit
from bench.inputs import zoo
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
    torch.testing.assert_close(calibration_fit.nll_per_point(z, y), torch.tensor([math.log(3), math.log(4), math.log(2)],
                                                                     dtype=torch.float64))
    torch.testing.assert_close(calibration_fit.brier_per_point(torch.softmax(z.double(), 1), y),
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
    t = calibration_fit.fit_temperature(z, y)
    assert t == pytest.approx(best, rel=1e-3)
    assert nll(t) <= nll(best) + 1e-12
    assert not math.isclose(t, 1.0, rel_tol=0.05)  # the case is not trivial


def _grid_temperature(z, y):
    """argmin_T mean NLL(softmax(z / T)) by brute force on a log grid (independent of fit_temperature)."""
    grid = torch.exp(torch.linspace(math.log(0.05), math.log(20), 40001, dtype=torch.float64))
    nll = (torch.logsumexp(z[None] / grid[:, None, None], 2) - z.gather(1, y[:, None]).squeeze(1)[None] / grid[:, None])
    return grid[int(nll.mean(1).argmin())].item()


def _hand_adaptive_ece(conf, ok, bins):
    """Adaptive ECE counted by hand: sort, cut into groups of sizes differing by at most one (larger first)."""
    order = sorted(range(len(conf)), key=lambda i: (conf[i], i))
    n, total, start = len(conf), 0.0, 0
    for b in range(bins):
        size = n // bins + (1 if b < n % bins else 0)
        group = order[start:start + size]
        start += size
        total += abs(sum(float(ok[i]) for i in group) - sum(float(conf[i]) for i in group))
    return total / n


def test_groups_end_to_end_on_the_released_jeat_model(tmp_path, capsys, digits):
    """The released digits models trained on all of their training split: the temperature is
    cross-fitted on the evaluation points, each half scaled by the other half's fit."""
    from bench.inputs import checkpoints

    path = zoo.models_dir() / "digits" / "digits-jeat.safetensors"
    out = tmp_path / "run"
    assert main(["run", "--model", str(path), "--suite", "calibration", "--n-eval", "60", "--out", str(out)]) == 0, \
        capsys.readouterr().err
    m = json.loads((out / "results.json").read_text())["metrics"]
    assert set(cal.EXTRA) | set(cal.EXTRA_FGSM) | {"ece", "ece_fgsm"} == set(m)
    model = checkpoints.load(str(path)).model.eval()
    with torch.no_grad():
        z = model.logits(digits.test.x[:60]).double()
    y = digits.test.y[:60]
    t1, t2 = _grid_temperature(z[:30], y[:30]), _grid_temperature(z[30:], y[30:])
    fit = m["temperature"]["details"]
    assert fit["split"] == "two-fold cross-fit" and m["temperature"]["n"] == 60
    assert [f["temperature"] for f in fit["folds"]] == pytest.approx([t1, t2], rel=2e-3)
    assert m["temperature"]["value"] == pytest.approx(math.sqrt(t1 * t2), rel=2e-3)
    t = torch.cat([torch.full((30,), t2), torch.full((30,), t1)]).double()[:, None]  # the other half's fit
    p, p_ts = torch.softmax(z, 1), torch.softmax(z / t, 1)
    assert m["nll"]["value"] == pytest.approx(torch.nn.functional.cross_entropy(z, y).item(), abs=1e-6)
    assert m["nll_ts"]["value"] == pytest.approx(torch.nn.functional.cross_entropy(z / t, y).item(), rel=2e-3)
    assert m["brier"]["value"] == pytest.approx(((p - torch.eye(10)[y]) ** 2).sum(1).mean().item(), abs=1e-6)
    assert m["ece_ts"]["value"] == pytest.approx(
        multiclass_calibration_error(p_ts, y, num_classes=10, n_bins=20, norm="l1").item(), abs=2e-3)
    conf, pred = p.max(1)
    assert m["ece_adaptive"]["value"] == pytest.approx(_hand_adaptive_ece(conf.tolist(), (pred == y).tolist(), 20),
                                                       abs=1e-9)
    assert m["mce"]["value"] == pytest.approx(
        multiclass_calibration_error(p, y, num_classes=10, n_bins=20, norm="max").item(), abs=1e-6)
    assert "fitted on clean points" in m["nll_ts_fgsm"]["details"]["temperature_note"]
    assert m["nll_ts_fgsm"]["details"]["temperature_split"] == "two-fold cross-fit"
    assert (out / "figures" / "reliability_clean_ts.png").is_file()
    assert (out / "figures" / "reliability_fgsm_ts.png").is_file()


@pytest.mark.parametrize(("used", "split"), [(1000, "held-out training tail"), (1300, "two-fold cross-fit"),
                                             (None, "two-fold cross-fit")])
def test_training_tail_only_when_the_checkpoint_held_it_out(tmp_path, digits, used, split):
    """The last 10 % of the training split (135 of 1347 digits) fits T only when the checkpoint
    trained on the first ``train_n`` points and the tail lies beyond them."""
    from bench.inputs import checkpoints
    from bench.metrics import Context

    model = checkpoints.load(str(zoo.models_dir() / "digits" / "digits-normal.safetensors")).model.eval()
    ctx = Context(model, digits, {"n_eval": 100, "ece_bins": 20, "batch_size": 250, "eps": 0.1, "norm": "Linf",
                                  "seed": 0}, torch.device("cpu"), tmp_path, train_used=used)
    m = cal.calibration_extra_group(ctx)
    assert m["temperature"].details["split"] == split
    if split == "held-out training tail":
        with torch.no_grad():
            z_hold = model.logits(digits.train.x[-135:]).double()
        assert m["temperature"].n == 135
        assert m["temperature"].value == pytest.approx(_grid_temperature(z_hold, digits.train.y[-135:]), rel=2e-3)
    else:
        assert m["temperature"].n == 100 and len(m["temperature"].details["folds"]) == 2


def test_temperature_refused_without_unseen_points(tmp_path, digits):
    from bench.inputs import checkpoints
    from bench.metrics import Context

    model = checkpoints.load(str(zoo.models_dir() / "digits" / "digits-normal.safetensors")).model.eval()
    ctx = Context(model, digits, {"n_eval": 1, "ece_bins": 20, "batch_size": 250, "eps": 0.1, "norm": "Linf",
                                  "seed": 0}, torch.device("cpu"), tmp_path)
    m = cal.calibration_extra_group(ctx)
    assert m["temperature"].value is None and "no second fold" in m["temperature"].reason
    assert m["nll_ts"].value is None and m["nll"].value is not None


_GROUPS = ("ece", "ece_fgsm", "calibration_extra", "calibration_extra_fgsm")


def _calibration_suite(model, digits, tmp_path, one_ctx: bool, **settings) -> tuple[dict, int]:
    """The four calibration groups on one Context (one run) or each on its own (as separate runs),
    each on its group's context as the pipeline makes it (the defended model for a group that
    declares the defence); -> (every metric's value and details, rows the network saw)."""
    from bench.core.settings import DEFAULTS
    from bench.metrics import Context
    from bench.metrics.registry import load_all
    from bench.pipeline.compute import group_context

    s = dict(DEFAULTS, n_eval=90, ece_bins=20, batch_size=40, eps=0.1, norm="Linf", seed=0, **settings)
    rows = []
    hook = model.net.register_forward_hook(lambda mod, args, out: rows.append(len(out)))
    out, ctx = {}, None
    try:
        for name in _GROUPS:
            ctx = ctx if (one_ctx and ctx) else Context(model, digits, s, torch.device("cpu"), tmp_path / name)
            g = load_all()[name]
            out.update({k: (r.value, r.details) for k, r in g.fn(group_context(g, ctx)).items()})
    finally:
        hook.remove()
    return out, sum(rows)


def test_one_run_makes_the_logits_and_fgsm_inputs_once(tmp_path, digits):
    """One run computes the clean logits of the 90 points once (not in ece, calibration_extra and its
    cross-fit: 3 x 90 rows) and the FGSM inputs and their logits once (not in both FGSM groups:
    2 x 180 rows), with every value and detail bit-equal to each group computed on its own (there
    calibration_extra_fgsm fits the temperature on the clean logits too)."""
    from bench.inputs import checkpoints

    model = checkpoints.load(str(zoo.models_dir() / "digits" / "digits-normal.safetensors")).model.eval()
    shared, rows = _calibration_suite(model, digits, tmp_path, one_ctx=True)
    alone, rows_alone = _calibration_suite(model, digits, tmp_path, one_ctx=False)
    assert rows == 90 + 180
    assert rows_alone == 90 + 180 + 90 + (180 + 90)
    assert shared.keys() == alone.keys() and len(shared) == 17
    for k in shared:  # NaN-free: == on floats and the per-point records is bit equality
        assert shared[k][0] == alone[k][0], k
        assert shared[k][1] == alone[k][1], k


def test_a_defended_run_shares_nothing(tmp_path, digits):
    """Under sgld-refine each group draws the defence's noise from its own generator, so its logits
    are its own: one run gives what each group gives alone (sharing would give ece's draws to
    calibration_extra)."""
    from bench.inputs import checkpoints

    model = checkpoints.load(str(zoo.models_dir() / "digits" / "digits-normal.safetensors")).model.eval()
    kw = {"defense": "sgld-refine", "refine_steps": 2, "refine_noise": 0.05}
    shared, _ = _calibration_suite(model, digits, tmp_path, one_ctx=True, **kw)
    alone, _ = _calibration_suite(model, digits, tmp_path, one_ctx=False, **kw)
    for k in ("ece", "nll", "ece_fgsm", "nll_fgsm", "temperature"):
        assert shared[k][0] == alone[k][0], k
