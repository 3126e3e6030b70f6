import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from bench.core.settings import DEFAULTS
from bench.engines import generation
from bench.engines.ssim import nearest_neighbours, show_order, ssim, ssim_matrix, window_stats
from bench.metrics import Context, load_all
from tests.conftest import tiny_model


def sk(a: torch.Tensor, b: torch.Tensor) -> float:
    """scikit-image's SSIM of two (C, H, W) images, in float64 (the exact reference)."""
    return structural_similarity(a.double().numpy(), b.double().numpy(), data_range=1, channel_axis=0,
                                 win_size=7, gaussian_weights=False, use_sample_covariance=True)


def sk_matrix(a, b) -> torch.Tensor:
    return torch.tensor([[sk(a[i], b[j]) for j in range(len(b))] for i in range(len(a))], dtype=torch.float64)


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", [(1, 16, 12), (3, 32, 32), (2, 7, 9)])
def test_equals_scikit_image_on_random_images(shape):
    a, b = _rand(5, *shape, seed=1), _rand(4, *shape, seed=2)
    b[1] = 0.7 * a[1] + 0.3 * b[1]  # a similar pair, not only noise
    ref = sk_matrix(a, b)
    torch.testing.assert_close(ssim_matrix(a, b).double(), ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(ssim_matrix(a, b, budget=7).double(), ref, rtol=0, atol=1e-5)  # many blocks
    # window statistics one image at a time on both sides
    torch.testing.assert_close(ssim_matrix(a, b, budget=7, stats_budget=1).double(), ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(ssim_matrix(a, b, dtype=torch.float64), ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(ssim(a[:4], b).double(), ref.diagonal(), rtol=0, atol=1e-5)


def test_equals_scikit_image_on_digits(digits):
    # 8x8 digits with win 7 leave a 2x2 valid region; scikit-image crops to exactly that
    a, b = digits.train.x[:25], digits.test.x[:20]
    ref = sk_matrix(a, b)
    assert ref.max() > 0.5 and ref.min() < 0.1  # similar and dissimilar pairs
    torch.testing.assert_close(ssim_matrix(a, b).double(), ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(ssim(a[:20], b).double(), ref.diagonal(), rtol=0, atol=1e-5)
    # scikit-image on float32 arrays (its own float32 arithmetic) agrees as well
    f32 = structural_similarity(a[3].numpy(), b[3].numpy(), data_range=1, channel_axis=0)
    assert ssim(a[3:4], b[3:4]).item() == pytest.approx(f32, abs=1e-5)


def test_constant_and_identical_images():
    z, one = torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8)
    x = _rand(2, 1, 8, 8, seed=3)
    assert ssim(z, z).tolist() == [1.0, 1.0]
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-6)
    assert ssim(z, one) == pytest.approx([sk(z[0], one[0])] * 2, abs=1e-7)


def test_window_stats_and_errors():
    x = _rand(3, 2, 9, 10)
    mean, var, centred = window_stats(x)
    assert mean.shape == (2 * 3 * 4, 3) and centred.shape == (24, 3, 49)
    assert mean[0, 1].item() == pytest.approx(x[1, 0, :7, :7].mean().item(), abs=1e-6)
    assert var[0, 1].item() == pytest.approx(x[1, 0, :7, :7].var().item(), abs=1e-6)  # sample variance
    with pytest.raises(ValueError, match="exceeds"):
        ssim(torch.rand(1, 1, 6, 8), torch.rand(1, 1, 6, 8))
    with pytest.raises(ValueError, match="odd"):
        ssim(x, x, win_size=4)
    with pytest.raises(ValueError, match="shape"):
        ssim_matrix(torch.rand(1, 1, 8, 8), torch.rand(1, 3, 8, 8))


def test_planted_training_image_is_found(digits):
    train = digits.train.x
    j = 123
    row = ssim_matrix(train[j:j + 1], train)[0]
    row[j] = -1
    assert row.max() < 0.999  # train[j] has no duplicate, so its index is the only right answer
    gen = torch.cat([_rand(3, 1, 8, 8, seed=5), train[j:j + 1], digits.test.x[:6]])
    # blocks of at most 5000 elements, window statistics of 100 images at a time
    vals, idx = nearest_neighbours(gen, train, k=5, budget=5000, stats_budget=4 * 51 * 100)
    assert vals.shape == (10, 5) and idx.shape == (10, 5)
    assert idx[3, 0].item() == j and vals[3, 0].item() == pytest.approx(1.0, abs=1e-6)
    assert vals[3, 1] < 0.999
    # exact: the same as sorting the full all-pairs matrix
    full = ssim_matrix(gen, train)
    top = full.topk(5, dim=1)
    torch.testing.assert_close(vals, top.values)
    assert (vals[:, :-1] >= vals[:, 1:]).all()  # best first
    torch.testing.assert_close(full.gather(1, idx), vals)


def test_nearest_neighbours_against_scikit_image_loop(digits):
    train = digits.train.x[:150]
    gen = digits.test.x[:3]
    vals, idx = nearest_neighbours(gen, train, k=4)
    ref = sk_matrix(gen, train)
    ref_v, ref_i = ref.topk(4, dim=1)
    torch.testing.assert_close(vals.double(), ref_v, rtol=0, atol=1e-5)
    assert torch.equal(idx, ref_i)


def test_ssim_nn_result_is_scikit_image_and_refuses_small_images(digits):
    """The one ssim_nn builder (the memorization group and bench samples): its mean, standard
    error, maximum and share above 0.9 against scikit-image's nearest-neighbour SSIMs by hand (one
    generated image a copy of a training image), k capped at the training set, and a null with
    the reason below the 7x7 window."""
    from bench.metrics.memorization import ssim_nn_result
    from bench.runtime.execution import Execution

    train = digits.train.x[:40]
    gen = torch.cat([digits.test.x[:4], train[5:6]])  # the last one is a training image
    res, vals, idx = ssim_nn_result(gen, train, k=100, run=Execution("cpu"))
    best = sk_matrix(gen, train).max(1).values
    assert res.value == pytest.approx(best.mean().item(), abs=1e-5)
    assert res.std == pytest.approx((best.std() / len(best) ** 0.5).item(), abs=1e-5)
    assert res.n == 5 and vals.shape == (5, 40) and idx[4, 0] == 5  # k capped at the 40 images
    assert res.details["max"] == pytest.approx(1.0, abs=1e-5)
    assert res.details["frac_above_0.9"] == pytest.approx((best > 0.9).double().mean().item())
    small, v, i = ssim_nn_result(_rand(3, 1, 6, 6), _rand(4, 1, 6, 6, seed=1), k=2, run=Execution("cpu"))
    assert small.value is None and v is None and i is None and "at least 7x7" in small.reason


def test_show_order_takes_classes_in_turn():
    y = torch.tensor([0, 0, 0, 1, 1, 2])
    assert show_order(y, 5) == [0, 3, 5, 1, 4]
    assert show_order(y, 10) == [0, 3, 5, 1, 4, 2]


def test_ssim_group_through_context(digits, tmp_path):
    g = load_all()["ssim_nn"]
    assert g.suite == "memorization" and g.metrics == ("ssim_nn",)
    assert {"n_gen", "gen_steps", "seed", "ssim_k", "ssim_n_show"} <= set(g.settings)
    gen = torch.cat([digits.test.x[:20], digits.train.x[40:41]])
    gy = torch.cat([digits.test.y[:20], digits.train.y[40:41]])
    given = generation.Generated(key={}, x=gen, y=gy, n_diverged=0)  # the run's set, given to the context
    s = dict(DEFAULTS, eps=0.1, ssim_k=3, ssim_n_show=4)
    r = g.fn(Context(tiny_model(), digits, s, torch.device("cpu"), tmp_path, generation=given))["ssim_nn"]
    vals, idx = nearest_neighbours(gen, digits.train.x, 3)
    nn = vals[:, 0].double()
    assert r.n == 21 and r.value == pytest.approx(nn.mean().item(), abs=1e-9)
    assert r.std == pytest.approx(nn.std().item() / 21**0.5)
    assert r.details["max"] == pytest.approx(1.0, abs=1e-6)  # the planted training image
    assert r.details["frac_above_0.9"] == pytest.approx((nn > 0.9).double().mean().item())
    assert r.details["median"] == pytest.approx(nn.median().item())
    assert r.details["n_train"] == len(digits.train) and r.details["k"] == 3
    png = tmp_path / "figures" / "ssim_neighbours.png"
    assert r.details["figure"] == "figures/ssim_neighbours.png" and png.read_bytes()[:4] == b"\x89PNG"
    assert len(r.details["shown"]["generated"]) == 4
    assert np.array(r.details["shown"]["ssim"]).shape == (4, 3)


def test_neighbour_grid_in_colour(tmp_path):
    from bench.engines import plots

    gen, train = _rand(2, 3, 10, 10, seed=7), _rand(30, 3, 10, 10, seed=8)
    vals, idx = nearest_neighbours(gen, train, k=3)
    path = plots.ssim_neighbours_grid(gen, train[idx], vals, tmp_path / "grid.png", "colour")
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 5_000
