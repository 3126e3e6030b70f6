import math

import pytest
import torch
from torch import nn

from bench.core.energy import EnergyModel
from bench.core.errors import BenchError
from bench.core.settings import DEFAULTS, validate
from bench.engines.denoising import add_noise, langevin_denoise, psnr
from bench.engines.landscape_grid import energy_grid, grid_coords, landscape_summary, random_directions
from bench.engines.sampling import SGLDConfig, sgld
from bench.engines.ssim import ssim
from bench.inputs.data import Dataset, Split
from bench.metrics import Context, load_all
from bench.runtime.execution import Execution
from tests.conftest import tiny_model


def _ctx(model, ds, tmp_path, **settings):
    s = dict(DEFAULTS, eps=0.1, batch_size=64)
    s.update(settings)
    return Context(model, ds, s, torch.device("cpu"), tmp_path)


# ---------------------------------------------------------------------------- landscape


def test_grid_coords_and_directions():
    c = grid_coords(0.2, 41)
    assert len(c) == 41 and c[20].item() == 0.0 and c[0].item() == -0.2 and c[-1].item() == 0.2
    torch.testing.assert_close(c, -c.flip(0))
    assert 0.0 not in grid_coords(0.2, 4).tolist()
    with pytest.raises(ValueError):
        grid_coords(0.1, 1)
    d = random_directions(3, (1, 8, 8), torch.Generator().manual_seed(0))
    assert d.shape == (3, 2, 1, 8, 8)
    torch.testing.assert_close(d.flatten(2).abs().amax(2), torch.ones(3, 2))
    assert not torch.allclose(d[:, 0], d[:, 1])


def test_grid_at_offset_zero_is_the_image_energy(digits):
    m = tiny_model(width=4)
    x, y = digits.test.x[:3], digits.test.y[:3]
    d = random_directions(3, x.shape[1:], torch.Generator().manual_seed(0))
    c = grid_coords(0.2, 5)
    grid = energy_grid(m, x, y, d, c, Execution(batch_size=7))  # batches straddle images
    assert grid.shape == (3, 5, 5)
    with torch.no_grad():
        e = m.energy_joint(x, y)
        corner = m.energy_joint(x - 0.2 * d[:, 0] + 0.1 * d[:, 1], y)  # alpha = c[0], beta = c[3]
    torch.testing.assert_close(grid[:, 2, 2], e, rtol=0, atol=1e-6)
    torch.testing.assert_close(grid[:, 0, 3], corner, rtol=0, atol=1e-6)


def test_landscape_summary_by_hand():
    c = grid_coords(1.0, 3)  # -1, 0, 1
    bowl = torch.tensor([[2.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 2.0]])  # minimum at the centre
    tilt = torch.tensor([[-3.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # minimum at (-1, -1)
    s = landscape_summary(torch.stack([bowl, tilt]), torch.tensor([0.0, 0.0]), c, 1.0)
    assert s["flatness"].tolist() == pytest.approx([12 / 9, -3 / 9])
    assert s["center_is_min"].tolist() == [True, False]
    assert s["min_offset"].tolist() == pytest.approx([0.0, math.sqrt(2)])
    assert (s["min_alpha"][1].item(), s["min_beta"][1].item()) == (-1.0, -1.0)


def test_landscape_group_through_context(digits, tmp_path):
    g = load_all()["landscape"]
    assert g.suite == "landscape"
    assert set(g.metrics) == {"landscape_flatness", "landscape_center_is_min", "landscape_min_offset"}
    assert {"landscape_images", "landscape_radius", "landscape_resolution", "seed"} <= set(g.settings)
    m = tiny_model(width=4)
    res = g.fn(_ctx(m, digits, tmp_path, landscape_images=2, landscape_resolution=9, landscape_radius=None))
    r = res["landscape_flatness"]
    assert r.n == 2 and r.details["radius"] == pytest.approx(0.2)  # default 2 eps
    with torch.no_grad():
        centre = m.energy_joint(digits.test.x[:2], digits.test.y[:2])
    assert r.details["per_image"]["centre_energy"] == pytest.approx(centre.tolist(), abs=1e-6)
    per = r.details["per_image"]
    flat = [gm - ce for gm, ce in zip(per["grid_mean"], per["centre_energy"], strict=True)]
    assert r.value == pytest.approx(sum(flat) / 2, abs=1e-6)
    assert 0 <= res["landscape_center_is_min"].value <= 1
    assert 0 <= res["landscape_min_offset"].value <= math.sqrt(2) + 1e-9
    for name in ("landscape_0.png", "landscape_1.png", "landscape.png"):
        assert (tmp_path / "figures" / name).read_bytes()[:4] == b"\x89PNG"
    # seeded: the same directions again
    again = g.fn(_ctx(m, digits, tmp_path, landscape_images=2, landscape_resolution=9, landscape_radius=0.2))
    assert again["landscape_flatness"].value == r.value


# ---------------------------------------------------------------------------- denoise


def test_psnr_by_hand():
    ref = torch.full((3, 1, 2, 2), 0.25)
    x = ref + torch.tensor([[[[0.125, -0.125], [0.125, 0.125]]], [[[0.5, 0.0], [0.0, 0.0]]],
                            [[[0.1, 0.0], [0.0, 0.0]]]])
    # image 0: MSE = 1/64 -> 10 log10(64) dB; image 1: MSE = 0.25 / 4 -> 10 log10(16) dB;
    # image 2: MSE = (float32 0.1 - 0)^2 / 4 -> about 10 log10(400) = 26.0206 dB
    hand = [10 * math.log10(64), 10 * math.log10(16), 10 * math.log10(4 / ((0.25 + 0.1) - 0.25) ** 2)]
    assert psnr(x, ref).tolist() == pytest.approx(hand, abs=1e-5)
    assert psnr(x[:2], ref[:2]).tolist() == pytest.approx(hand[:2], abs=1e-12)  # exact in binary
    assert psnr(2 * x[:2], 2 * ref[:2], data_range=2.0).tolist() == pytest.approx(hand[:2], abs=1e-12)
    assert psnr(ref, ref).isinf().all()


def test_add_noise_variance_and_clamp():
    x = torch.full((20, 1, 32, 32), 0.5)
    g = torch.Generator().manual_seed(0)
    raw = add_noise(x, 0.3, g, clamp=False)
    assert (raw - x).var().item() == pytest.approx(0.3, rel=0.03)
    assert abs((raw - x).mean().item()) < 0.01
    clamped = add_noise(x, 0.3, torch.Generator().manual_seed(0))
    assert clamped.min() >= 0 and clamped.max() <= 1
    torch.testing.assert_close(clamped, raw.clamp(0, 1))


def test_langevin_snapshots_equal_separate_runs(digits):
    m = tiny_model(width=4)
    x, y = digits.test.x[:5], digits.test.y[:5]
    noisy = add_noise(x, 0.3, torch.Generator().manual_seed(0))
    snaps, finite = langevin_denoise(m, noisy, y, [3, 0, 7], step_size=0.5, noise=0.0)
    assert sorted(snaps) == [0, 3, 7] and finite.all()
    torch.testing.assert_close(snaps[0], noisy)
    for n in (3, 7):
        ref, _ = sgld(m, noisy, y, SGLDConfig(steps=n, step_size=0.5, noise=0.0, energy="joint", clamp=True))
        torch.testing.assert_close(snaps[n], ref)
    assert not torch.equal(snaps[7], noisy)


class Templates(nn.Module):
    """logits_k(x) = -||x - t_k||^2 / 2: E(x, y) is a bowl around template t_y."""

    def __init__(self, t):
        super().__init__()
        self.register_buffer("t", t)

    def forward(self, z):
        return -0.5 * (z.flatten(1).unsqueeze(1) - self.t.flatten(1).unsqueeze(0)).pow(2).sum(2)


def test_denoise_group_on_a_model_whose_energy_knows_the_images(tmp_path):
    """Ten 8x8 test images, one per class, and an energy E(x, y) = ||x - x_y||^2 / 2 whose
    minimum is the clean image: Langevin descent must raise PSNR and SSIM, and more with more
    steps; the recorded numbers are recomputed here by hand."""
    torch.manual_seed(0)
    clean = torch.rand(10, 1, 8, 8)
    ys = torch.arange(10)
    ds = Dataset("toy", Split(clean, ys), Split(clean, ys), 10)
    model = EnergyModel(Templates(clean), 0.0, 1.0, (1, 8, 8), 10)
    g = load_all()["denoise"]
    assert g.suite == "denoise"
    assert set(g.metrics) == {"denoise_psnr_noisy", "denoise_psnr", "denoise_ssim_noisy", "denoise_ssim"}
    assert {"denoise_images", "denoise_var", "denoise_steps", "denoise_step_size", "denoise_noise"} <= set(g.settings)
    assert "denoise_label" in g.settings
    ctx = _ctx(model, ds, tmp_path, denoise_images=10, denoise_steps=[10, 50], denoise_step_size=0.05,
               denoise_noise=0.0, batch_size=4, denoise_label="oracle")
    res = g.fn(ctx)
    noisy_psnr, den = res["denoise_psnr_noisy"], res["denoise_psnr"]
    assert noisy_psnr.n == 10 and den.n == 10
    assert den.details["label_setting"] == "oracle" and den.details["label"].startswith("oracle")
    assert den.details["label_accuracy"] == 1.0
    # redo it by hand: the same noise stream, then x <- x - 0.025 (x - clean) per step
    noisy = add_noise(clean, 0.3, ctx.generator("denoise/noise"))
    assert noisy_psnr.value == pytest.approx(psnr(noisy, clean).mean().item(), abs=1e-9)
    assert noisy_psnr.value < 12  # variance 0.3 is heavy noise
    for steps in (10, 50):
        hand = clean + (noisy - clean) * (1 - 0.025) ** steps  # stays in [0, 1]: a convex combination
        assert den.details["by_steps"][str(steps)]["psnr"] == pytest.approx(psnr(hand, clean).mean().item(), abs=1e-4)
    assert den.details["steps"] == 50
    assert den.value == pytest.approx(den.details["by_steps"]["50"]["psnr"])
    assert den.value > den.details["by_steps"]["10"]["psnr"] > noisy_psnr.value
    assert res["denoise_ssim"].value > res["denoise_ssim_noisy"].value
    assert res["denoise_ssim_noisy"].value == pytest.approx(ssim(noisy, clean).double().mean().item(), abs=1e-6)
    assert den.std == pytest.approx(den.details["sd"] / 10**0.5)
    assert (tmp_path / "figures" / "denoise.png").read_bytes()[:4] == b"\x89PNG"
    # the noisy images do not depend on the batch size, nor on the Langevin settings
    other = g.fn(_ctx(model, ds, tmp_path, denoise_images=10, denoise_steps=[5], denoise_step_size=0.05,
                      denoise_noise=0.0, batch_size=3, denoise_label="oracle"))
    assert other["denoise_psnr_noisy"].value == noisy_psnr.value
    assert other["denoise_psnr"].value == pytest.approx(psnr(clean + (noisy - clean) * 0.975**5, clean).mean().item(),
                                                        abs=1e-4)


def test_denoise_default_label_is_the_prediction_on_the_noisy_image(tmp_path):
    """Templates close together (0.5 + small offsets), so heavy noise moves many images nearer
    another class's template: by default the chain descends E(x, y_hat) with y_hat the nearest
    template to the noisy image (the model's argmax, by hand here), not the true class."""
    g = torch.Generator().manual_seed(1)
    clean = 0.5 + 0.15 * (torch.rand(40, 1, 8, 8, generator=g) - 0.5)
    ys = torch.arange(40) % 10
    templates = torch.stack([clean[ys == k].mean(0) for k in range(10)])
    ds = Dataset("toy", Split(clean, ys), Split(clean, ys), 10)
    model = EnergyModel(Templates(templates), 0.0, 1.0, (1, 8, 8), 10)
    grp = load_all()["denoise"]
    kw = dict(denoise_images=40, denoise_steps=[20], denoise_step_size=0.05, denoise_noise=0.0, batch_size=16)
    ctx = _ctx(model, ds, tmp_path, **kw)
    assert ctx.settings["denoise_label"] == "predicted"  # the default
    res = grp.fn(ctx)["denoise_psnr"]
    noisy = add_noise(clean, 0.3, ctx.generator("denoise/noise"))
    d2 = (noisy.flatten(1)[:, None] - templates.flatten(1)[None]).pow(2).sum(2)
    y_hat = d2.argmin(1)  # the nearest template
    assert 0 < (y_hat == ys).sum() < 40  # the test can tell the two labels apart
    assert res.details["label_setting"] == "predicted" and res.details["label"].startswith("predicted")
    assert res.details["label_accuracy"] == pytest.approx((y_hat == ys).double().mean().item())

    def hand(labels):  # x <- x - 0.025 (x - t_label) per step, a convex combination (no clamp needed)
        t = templates[labels]
        return psnr(t + (noisy - t) * 0.975**20, clean).mean().item()

    assert res.value == pytest.approx(hand(y_hat), abs=1e-4)
    oracle = grp.fn(_ctx(model, ds, tmp_path, denoise_label="oracle", **kw))["denoise_psnr"]
    assert oracle.value == pytest.approx(hand(ys), abs=1e-4)
    assert abs(hand(ys) - hand(y_hat)) > 0.01  # far beyond the tolerance above
    assert oracle.details["label_setting"] == "oracle" and oracle.details["label_accuracy"] == 1.0
    with pytest.raises(BenchError, match="unknown denoise label 'truth'"):  # checked once, for the run
        validate(dict(DEFAULTS, denoise_label="truth"))


def test_denoise_group_on_a_tiny_cnn_equals_a_hand_descent(digits, tmp_path):
    """The group's numbers on a CNN against a re-typed descent: the same noisy images, labels
    argmax f(x_noisy), x <- clamp(x - step/2 grad_x E(x, y), 0, 1) with autograd; PSNR by hand and
    SSIM by scikit-image."""
    from skimage.metrics import structural_similarity

    m = tiny_model(width=4)
    ctx = _ctx(m, digits, tmp_path, denoise_images=12, denoise_steps=[3, 10], denoise_step_size=0.5,
               batch_size=5)
    res = load_all()["denoise"].fn(ctx)
    clean = digits.test.x[:12]
    x = add_noise(clean, 0.3, ctx.generator("denoise/noise"))
    with torch.no_grad():
        y = m.logits(x).argmax(1)
    assert (y != digits.test.y[:12]).any()  # an untrained net: its labels are not the truth

    def psnr_hand(a):
        mse = (a.double() - clean.double()).pow(2).flatten(1).mean(1)
        return (10 * torch.log10(1 / mse)).mean().item()

    noisy_psnr = psnr_hand(x)
    for step in range(1, 11):
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(-m.logits(x).gather(1, y[:, None]).sum(), x)
        x = (x - 0.25 * grad).clamp(0, 1).detach()
        if step == 3:
            assert res["denoise_psnr"].details["by_steps"]["3"]["psnr"] == pytest.approx(psnr_hand(x), abs=1e-4)
    assert res["denoise_psnr_noisy"].value == pytest.approx(noisy_psnr, abs=1e-9)
    den = res["denoise_psnr"]
    assert den.value == pytest.approx(psnr_hand(x), abs=1e-4) and den.n == 12
    assert den.value != pytest.approx(noisy_psnr, abs=1e-3)  # the descent moved the images
    sk = [structural_similarity(a[0].double().numpy(), b[0].double().numpy(), win_size=7, data_range=1.0)
          for a, b in zip(x, clean, strict=True)]
    assert res["denoise_ssim"].value == pytest.approx(sum(sk) / 12, abs=1e-4)
    assert den.details["diverged_chains"] == 0
