"""The run's plan (bench/pipeline/plan.py): the groups' declared work against hand counts, --plan
writing nothing, cached groups shown as cached, the batch size lowered to the free memory, and
the generated set written without a second copy in memory."""

import math
import tracemalloc

import numpy as np
import pytest
import torch

from bench.core import cost
from bench.engines import generation
from bench.inputs import checkpoints
from bench.metrics import registry
from bench.pipeline import plan, runner, timing_probe
from tests.conftest import tiny_model

pytestmark = pytest.mark.timed_plan  # the plan's probe is what these tests time

META = {"arch": "digits-cnn", "arch_kwargs": {"width": 4, "act": "silu"}, "num_classes": 10,
        "input_shape": [1, 8, 8], "dataset": "digits", "method": "normal",
        "threat_model": {"norm": "Linf", "eps": 0.1}}
SIZES = cost.Sizes(n_test=450, n_train=1347, num_classes=10, image_shape=(1, 8, 8), accuracy=0.5)


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "m.safetensors"
    checkpoints.save(path, tiny_model(), META)
    return str(path)


def _cost(group: str, **s):
    return registry.load_all()[group].cost(s, SIZES)


def test_pgd_work_is_points_times_steps_times_restarts():
    w = _cost("pgd20", n_eval=100, pgd_steps=20, pgd_restarts=2, batch_size=40)
    assert w.backward == 100 * 20 * 2
    assert w.calls["backward"] == math.ceil(100 / 40) * 20 * 2  # 3 batches per step
    assert w.forward == 100 * (2 + 1)  # a classification per restart and the clean one
    assert _cost("pgd20", n_eval=None, pgd_steps=5, pgd_restarts=1, batch_size=250).backward == 450 * 5  # all points


def test_autoattack_work_counts_the_surviving_points():
    w = _cost("autoattack", n_eval=100, n_aa=10, pgd_steps=20, pgd_restarts=1, batch_size=250, norm="Linf",
              aa_version="standard")
    robust = 10 * 0.5  # the probe's accuracy bounds the survivors
    assert w.backward == robust * 100 + robust * 2 * 100 * 9 + 10 * 20  # APGD-CE, APGD-T + FAB-T, PGD-20
    assert w.forward == 10 * 2 + robust * 5000 + 10 * 2  # clean, Square, PGD's classifications
    assert _cost("autoattack", n_aa=10, batch_size=250, norm="L1", aa_version="standard") is None  # unknown


def test_fisher_landscape_ssim_and_extractor_work():
    assert _cost("fisher", n_score=30, probes=4, batch_size=250).backward == 30 * 2 + 30 * 4  # grads, jets
    assert _cost("fisher", n_score=30, probes=4, exact_trace=True, batch_size=250).backward == 30 * 2 + 30 * 64
    assert _cost("landscape", landscape_images=3, landscape_resolution=11, batch_size=250).forward == 3 * 121
    assert _cost("ssim_nn", n_gen=20, ssim_k=2, ssim_n_show=0).ssim == 20 * 1347
    w = _cost("is_fid", n_gen=100, n_ref=None)
    assert w.extractor == 100 + 1347  # the reference too: not cached (SIZES says unknown)
    assert w.ssim == 100**2 + 1347**2  # diversity_ssim's pairs of both sets


def test_seconds_are_work_times_unit_times():
    p = plan.Probe(unit={"forward": 1e-3, "backward": 3e-3, "extractor": 0.2}, call={"backward": 0.01})
    w = cost.passes("backward", 100, 50, 4) + cost.passes("forward", 10, 50) + cost.images("extractor", 5)
    assert p.seconds_for(w) == pytest.approx(400 * 3e-3 + 8 * 0.01 + 10 * 1e-3 + 5 * 0.2)


def test_time_kind_fits_a_per_call_and_a_per_image_cost():
    class Slow(torch.nn.Module):  # sleeps 20 ms per call and 1 ms per image
        def logits(self, x):
            import time
            time.sleep(0.02 + 0.001 * len(x))
            return x.flatten(1)[:, :10]

    unit, call, n = plan.time_kind(Slow(), torch.rand(16, 1, 8, 8), "forward", 16, torch.device("cpu"))
    assert n == 16 and unit == pytest.approx(0.001, rel=0.5) and call == pytest.approx(0.02, rel=0.5)


def test_batch_size_fits_the_free_memory():
    assert plan.fit_batch(250, per_image=1e6, free=1e8) == 100
    assert plan.fit_batch(250, per_image=1e6, free=1e9) == 250  # never raised
    assert plan.fit_batch(250, per_image=1e9, free=1e6) == 1
    assert plan.fit_batch(250, per_image=None, free=1e6) == 250  # unmeasured: left as it is


def test_a_short_memory_lowers_the_batch_size_with_a_note(tmp_path, ckpt, monkeypatch):
    monkeypatch.setattr(timing_probe, "peak_per_image", lambda *a: (2**20, "mocked"))  # 1 MiB per image
    monkeypatch.setattr(plan, "free_memory", lambda device: (37.5 * 2**20, "available RAM less a margin"))
    said = []
    runner.run(ckpt, "calibration", tmp_path / "out", settings={"n_eval": 20}, log=said.append, plan_only=True)
    assert "note: batch size lowered from 250 to 37: a forward+backward pass needs about 1 MB per image (mocked), " \
           "0.0366 GB available RAM less a margin" in said
    assert any(m.startswith("plan on cpu, batch 37 ") for m in said)


def test_plan_only_writes_nothing_and_cached_groups_show_as_cached(tmp_path, ckpt):
    out = tmp_path / "out"
    said = []
    assert runner.run(ckpt, "calibration", out, settings={"n_eval": 20}, log=said.append, plan_only=True) is None
    assert not out.exists()  # nothing computed, nothing written, not even the folder
    lines = [m for m in said if m.startswith("  [calibration]")]
    assert len(lines) == 4 and not any(m.endswith("cached") for m in lines)
    assert any(m.startswith("  total about") for m in said)
    runner.run(ckpt, "calibration", out, settings={"n_eval": 20}, log=lambda m: None)
    said.clear()
    runner.run(ckpt, "calibration", out, settings={"n_eval": 20}, log=said.append, plan_only=True)
    assert [m.split()[1] for m in said if m.startswith("  [calibration]") and m.endswith("  cached")] == [
        "ece", "ece_fgsm", "calibration_extra", "calibration_extra_fgsm"]


def test_a_group_without_a_cost_says_unknown():
    g = registry.Group("x", "robust", ("m",), (), lambda ctx: {})
    lines = plan.estimate([g], {}, SIZES, plan.Probe(), set(), None)
    assert lines[0].work is None and lines[0].seconds is None
    assert plan.format_lines(lines, plan.Probe(), "cpu", 250)[1].endswith("cost unknown")


def test_save_samples_holds_no_second_copy(tmp_path):
    x = torch.rand(4000, 3, 32, 32)  # 49 MB
    y = torch.arange(4000) % 10
    tracemalloc.start()
    generation.save_samples(tmp_path / "s.npz", x, y, {"format": generation.SAMPLES_FORMAT})
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < x.numel() * 4 / 2  # numpy writes in 16 MiB chunks; a buffer of the whole file exceeds it
    with np.load(tmp_path / "s.npz") as z:
        assert np.array_equal(z["x"], x.numpy()) and np.array_equal(z["y"], y.numpy())


def test_calibration_work_counts_the_shared_logits_once():
    """ece makes the clean logits, ece_fgsm the FGSM inputs and theirs (once per run, ctx.once);
    calibration_extra adds the temperature's held-out tail (10 % of the training split, 135 of
    1347), calibration_extra_fgsm only its diagram."""
    s = dict(n_eval=100, batch_size=250, eps=0.1)
    assert (_cost("ece", **s).forward, _cost("ece", **s).backward) == (100, 0)
    assert (_cost("ece_fgsm", **s).forward, _cost("ece_fgsm", **s).backward) == (100, 100)
    extra = _cost("calibration_extra", **s)
    assert (extra.forward, extra.backward, extra.calls["chart"]) == (135, 0, 1)
    fgsm = _cost("calibration_extra_fgsm", **s)
    assert fgsm.forward_equivalents() == 0 and fgsm.calls["chart"] == 1


def test_a_second_run_reads_the_probe_of_the_first(tmp_path, ckpt, monkeypatch):
    """The model's timing probe is kept under $JEAT_BENCH_CACHE/plan-probe, keyed by the weights,
    device and batch size: the same run again does not time the passes; another batch size does."""
    from bench.pipeline import probe_cache

    monkeypatch.setattr(probe_cache, "ENABLED", True)
    monkeypatch.setenv("JEAT_BENCH_CACHE", str(tmp_path / "cache"))
    timed = []
    real = plan.probe
    monkeypatch.setattr(plan, "probe", lambda *a: timed.append(a[2]["batch_size"]) or real(*a))
    said = []
    for batch in (50, 50, 40):
        runner.run(ckpt, "calibration", tmp_path / "out", settings={"n_eval": 20, "batch_size": batch},
                   log=said.append, plan_only=True)
    assert timed == [50, 40]
    heads = [m for m in said if m.startswith("plan on cpu")]
    assert "(probe of an earlier run: " in heads[1] and "(probe " in heads[0] and "earlier" not in heads[0]
    assert heads[1].split(": ", 1)[1] == heads[0].split(": ", 1)[1]  # the same units, read back
    assert len(list((tmp_path / "cache" / "plan-probe").glob("*.json"))) == 2


def test_a_note_said_by_both_parts_of_a_work_is_said_once():
    """shift_ce's work is the clean+corrupted passes twice (its own and the reference's): the plan
    line said "corrupting the images is not counted" twice."""
    from bench.core import cost

    a = cost.passes("forward", 10, 5, note="corrupting the images is not counted")
    b = cost.passes("forward", 4, 5, note="an upper bound")
    assert (a + a).note == "corrupting the images is not counted"
    assert (a + b + a).note == "corrupting the images is not counted; an upper bound"
    assert (a + a).forward == 20


def test_statistics_work_follows_the_kernels_and_distances_the_metrics_compute(monkeypatch):
    """The plan's statistics multiply-adds are those the computations make: KID's kernel products
    (torch-fidelity's kernel_poly, each call recorded: rows x rows x dims) and FD-infinity's
    distances (each frechet call's subset size, with the cost's per-distance count)."""
    import torch_fidelity.metric_kid as tf_kid

    from bench.engines import frechet
    from bench.engines.sample_quality import kid, kid_cost

    g = torch.Generator().manual_seed(0)
    gen, ref = torch.randn(60, 16, generator=g), torch.randn(90, 16, generator=g)
    kernel_macs, sizes = [], []
    real_kernel, real_frechet = tf_kid.kernel_poly, frechet.frechet

    def kernel(x, y, **kw):
        kernel_macs.append(x.shape[0] * y.shape[0] * x.shape[1])
        return real_kernel(x, y, **kw)

    def distance(x, mu, sigma):
        sizes.append(len(x))
        return real_frechet(x, mu, sigma)

    monkeypatch.setattr(tf_kid, "kernel_poly", kernel)
    monkeypatch.setattr(frechet, "frechet", distance)
    kid(gen, ref)
    assert kid_cost(60, 90, 16).stats == sum(kernel_macs) == 100 * 3 * 60 * 60 * 16
    mu, sigma = ref.double().mean(0).numpy(), np.cov(ref.double().numpy(), rowvar=False)
    frechet.fd_infinity(gen, mu, sigma, seed=0)
    assert len(sizes) == 37 and max(sizes) == 60
    per = [m * 16 * 16 + min(m, 16) ** 2 * max(m, 16) + 10 * min(m, 16) ** 3 for m in sizes]
    assert frechet.fd_infinity_cost(60, 16).stats == 2 * sum(per)


def test_judged_counts_its_statistics_at_the_shipped_judges_width():
    """The judge's KID at the shipped judge's penultimate width (the manifest's: digits 128,
    Fashion-MNIST 64): 100 subsets of three m x m kernels, m = min(1000, n_gen, n_ref)."""
    from bench.engines.frechet import fd_infinity_cost
    from bench.metrics.judged import judged_cost

    base = dict(n_gen=100, n_judge_ref=None, batch_size=250, judge=None)
    digits = cost.Sizes(450, 1347, 10, (1, 8, 8), dataset="digits")
    fmnist = cost.Sizes(10000, 60000, 10, (1, 28, 28), dataset="fashion-mnist")
    kid_digits, kid_fmnist = 100 * 3 * 100 ** 2 * 128, 100 * 3 * 100 ** 2 * 64
    fd = {d: fd_infinity_cost(100, d).stats for d in (128, 64)}
    assert judged_cost(base, digits).stats == kid_digits + fd[128]
    assert judged_cost(base, fmnist).stats == kid_fmnist + fd[64]
    assert "taken as 128-d" in judged_cost(dict(base, judge="mine.pt"), fmnist).note
