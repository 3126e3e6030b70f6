"""`bench samples` (bench.pipeline.samples_command), KID / precision-recall and diversity (bench.engines.sample_quality).

Features come from the small random-weight extractor of tests/test_generative.py (registered with
torch-fidelity), never from Inception: every test takes seconds."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import cli
from bench.core.errors import BenchError
from bench.engines import refstats
from bench.engines import sample_quality as Q
from bench.pipeline import samples_command
from tests.test_generative import TINY, digits_npz, tiny_extractors


@pytest.fixture(autouse=True)
def _cache_and_threads(fid_cache_one_thread):
    yield


@pytest.fixture(scope="module")
def tiny():
    return tiny_extractors()[0]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 200-image training split of digits (20 per class) as an npz data set."""
    path, ds = digits_npz(tmp_path_factory.mktemp("small"), 20)
    return f"npz:{path}", ds


def _hand_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the kernel (x.y / d + 1)^3, written out (Binkowski et al. 2018, Eq. 3)."""
    d = x.shape[1]
    k = lambda a, b: (a.astype(np.float64) @ b.astype(np.float64).T / d + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
            - 2 * kxy.mean())


def test_kid_and_precision_recall_equal_torch_fidelity_on_the_same_features():
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    g = torch.Generator().manual_seed(0)
    gen, ref = torch.randn(70, 12, generator=g) + 0.3, torch.randn(90, 12, generator=g)
    ours = Q.kid_prc(gen, ref)
    assert ours["kid_subset_size"] == 70  # min(1000, n_gen, n_ref): never above n
    kid = kid_features_to_metric(gen, ref, kid_subset_size=70, verbose=False)  # torch-fidelity's defaults otherwise
    assert ours["kid_mean"] == kid["kernel_inception_distance_mean"]
    assert ours["kid_std"] == kid["kernel_inception_distance_std"]
    prc = prc_features_to_metric(gen, ref, verbose=False)  # its in-memory variant (ours runs the blockwise one)
    assert (ours["precision"], ours["recall"]) == (prc["precision"], prc["recall"])
    # equal sizes: every subset is the whole set permuted, so KID is the full-set MMD^2 by hand
    eq = Q.kid_prc(gen[:60], ref[:60])
    assert eq["kid_mean"] == pytest.approx(_hand_mmd2(gen[:60].numpy(), ref[:60].numpy()), rel=1e-4)
    assert eq["kid_std"] < 1e-4 * abs(eq["kid_mean"])
    # precision/recall by hand: generated point i is precise when it lies within the 3rd-nearest-
    # neighbour radius (itself excluded) of some real point; recall the other way round
    dgg, drr, dgr = torch.cdist(gen, gen), torch.cdist(ref, ref), torch.cdist(gen, ref)
    r_gen, r_ref = dgg.sort(1).values[:, 3], drr.sort(1).values[:, 3]
    assert ours["precision"] == pytest.approx((dgr <= r_ref[None]).any(1).double().mean().item(), abs=1e-6)
    assert ours["recall"] == pytest.approx((dgr.T <= r_gen[None]).any(1).double().mean().item(), abs=1e-6)
    tiny_sets = Q.kid_prc(gen[:3], ref)
    assert tiny_sets["precision"] is None and "more than 3" in tiny_sets["reason_prc"]
    assert tiny_sets["kid_subset_size"] == 3 and tiny_sets["kid_mean"] is not None


def test_pairwise_ssim_is_scikit_image_over_pairs():
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(3)
    x = torch.rand(7, 1, 8, 8, generator=g)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 1])
    ref = {}
    for i in range(7):
        for j in range(i + 1, 7):
            ref[(i, j)] = structural_similarity(x[i, 0].double().numpy(), x[j, 0].double().numpy(), data_range=1.0,
                                                win_size=7, gaussian_weights=False, use_sample_covariance=True)
    got = Q.pairwise_ssim(x, y)
    assert got["overall"] == pytest.approx(np.mean(list(ref.values())), abs=1e-6)
    cls0 = np.mean([ref[p] for p in ((0, 1), (0, 2), (1, 2))])
    cls1 = np.mean([ref[p] for p in ((3, 4), (3, 6), (4, 6))])
    assert got["per_class"][0] == pytest.approx(cls0, abs=1e-6)
    assert got["per_class"][1] == pytest.approx(cls1, abs=1e-6)
    assert 2 not in got["per_class"]  # one image: no pair
    assert got["within_class"] == pytest.approx((cls0 + cls1) / 2, abs=1e-6)
    sub = Q.pairwise_ssim(x, None, cap=4)  # evenly spread subset: images 0, 2, 4, 6
    assert sub["n"] == 4 and sub["overall"] == pytest.approx(
        np.mean([ref[p] for p in ((0, 2), (0, 4), (0, 6), (2, 4), (2, 6), (4, 6))]), abs=1e-6)


def _save_all_formats(folder: Path, u8: np.ndarray, y: np.ndarray) -> dict:
    """The same uint8 grey images (N, H, W) as npz (uint8 NHWC), npz (float NCHW), PNG folder
    (one subfolder per class) and .pt (float tensor with labels)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = {"npz_u8": folder / "u8.npz", "npz_float": folder / "f.npz", "png": folder / "png",
             "pt": folder / "s.pt"}
    np.savez(paths["npz_u8"], x=u8[..., None], y=y)
    np.savez(paths["npz_float"], x=(u8[:, None] / 255.0).astype(np.float32), y=y)
    for i, (im, c) in enumerate(zip(u8, y, strict=True)):
        d = paths["png"] / str(int(c))
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im, mode="L").save(d / f"{i:04d}.png")
    torch.save({"x": torch.from_numpy(u8[:, None] / 255.0).float(), "y": torch.from_numpy(y)}, paths["pt"])
    return paths


def test_reading_npz_folder_and_pt_give_identical_numbers(tmp_path, tiny, small):
    name, ds = small
    g = torch.Generator().manual_seed(1)
    u8 = (torch.rand(40, 8, 8, generator=g) * 255).round().to(torch.uint8).numpy()
    y = np.repeat(np.arange(10), 4)  # class by class, the order a folder per class is read in
    paths = _save_all_formats(tmp_path / "s", u8, y)
    want_x, want_y = torch.from_numpy(u8[:, None] / 255.0).float(), torch.from_numpy(y)
    for k, p in paths.items():
        s = samples_command.read_samples(p, ds.input_shape, ds.num_classes)
        assert s.x.dtype == torch.float32 and torch.equal(s.x, want_x) and torch.equal(s.y, want_y), k
        assert s.info["format"] == {"npz_u8": "npz", "npz_float": "npz", "png": "png-folder", "pt": "pt"}[k]
    results = {}
    for k in ("npz_u8", "png", "pt"):
        res = samples_command.evaluate(paths[k], name, tmp_path / f"out-{k}", fid_extractor=TINY, device="cpu",
                                  log=lambda m: None)
        results[k] = {m: (r.value, r.std, r.n) for m, r in res.metrics.items()}
    assert all(results["npz_u8"][m][0] is not None for m in ("fid", "kid_mean", "precision", "recall",
                                                              "is_mean", "ssim_nn", "diversity_ssim"))
    assert results["png"] == results["npz_u8"] and results["pt"] == results["npz_u8"]


def test_identical_sets_and_a_collapsed_sampler(tmp_path, tiny, small):
    name, ds = small
    same = tmp_path / "same.npz"
    np.savez(same, x=ds.train.x.numpy(), y=ds.train.y.numpy())
    r = samples_command.evaluate(same, name, tmp_path / "same", fid_extractor=TINY, device="cpu", log=lambda m: None)
    m = r.metrics
    scale = float(np.trace(refstats.reference_statistics(ds.train.x, tiny, "x", cache=False)[0]["sigma"]))
    assert m["precision"].value == 1.0 and m["recall"].value == 1.0
    assert abs(m["fid"].value) < 1e-6 * scale
    assert abs(m["kid_mean"].value) < 1e-2 * m["kid_std"].value + 1e-3
    assert m["ssim_nn"].value == pytest.approx(1.0, abs=1e-5)
    assert m["diversity_ssim"].value == pytest.approx(m["diversity_ssim"].details["train"], abs=1e-9)
    # small n is recorded: KID subsets of n = 200, FID flagged as biased upward
    assert m["kid_mean"].details["kid_subset_size"] == 200 and m["kid_mean"].n == 200
    assert "biased upward at n = 200" in m["fid"].details["bias"]
    # one image repeated, labelled as every class: recall collapses, diversity is 1
    one = tmp_path / "one.npz"
    np.savez(one, x=ds.train.x[:1].repeat(200, 1, 1, 1).numpy(), y=np.arange(200) % 10)
    c = samples_command.evaluate(one, name, tmp_path / "one", fid_extractor=TINY, device="cpu", log=lambda m: None).metrics
    assert c["recall"].value <= 2 / 200  # only the real points equal to that image fall in its balls
    assert c["diversity_ssim"].value == pytest.approx(1.0, abs=1e-5)
    assert c["diversity_ssim"].details["overall"] == pytest.approx(1.0, abs=1e-5)
    train_div = c["diversity_ssim"].details["train"]
    assert train_div < 0.9 and c["diversity_ssim"].value > train_div + 0.1
    assert c["fid"].value > 100 * abs(m["fid"].value) + 1e-3
    assert c["kid_mean"].value > 10 * m["kid_mean"].value
    saved = json.loads((tmp_path / "one" / "results.json").read_text())
    assert saved["schema"] == 1 and saved["model"]["sha256"] == hashlib.sha256(one.read_bytes()).hexdigest()
    assert saved["model"]["samples"]["format"] == "npz" and saved["model"]["samples"]["n"] == 200
    assert (tmp_path / "one" / "report.html").is_file() and list((tmp_path / "one" / "tables").glob("*.csv"))


def test_bench_samples_npz_with_diverged_chains_and_unlabelled_folder(tmp_path, tiny, small):
    name, ds = small
    x = ds.train.x[:30].clone()
    x[[3, 7]] = float("nan")  # bench's samples.npz marks diverged chains so
    p = tmp_path / "samples.npz"
    np.savez(p, x=x.numpy(), y=ds.train.y[:30].numpy(), meta=np.array("{}"))
    s = samples_command.read_samples(p, ds.input_shape, ds.num_classes)
    assert len(s.x) == 28 and s.info["n_nonfinite_dropped"] == 2
    assert torch.equal(s.y, ds.train.y[:30][[i for i in range(30) if i not in (3, 7)]])
    # a flat folder of RGB PNGs of grey images: no labels, diversity over the whole set
    from PIL import Image

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(12):
        g = (ds.train.x[i, 0] * 255).round().to(torch.uint8).numpy()
        Image.fromarray(np.stack([g] * 3, -1), mode="RGB").save(flat / f"{i}.png")
    s = samples_command.read_samples(flat, ds.input_shape, ds.num_classes)
    assert s.y is None and s.x.shape == (12, 1, 8, 8)
    r = samples_command.evaluate(flat, name, tmp_path / "flat-out", fid_extractor=TINY, device="cpu", log=lambda m: None)
    d = r.metrics["diversity_ssim"]
    assert d.details["within_class"] is None and d.value == d.details["overall"]


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing.npz", "samples not found"),
    (lambda p: (p / "a.txt").write_text("x") and p / "a.txt", "must be an .npz"),
    (lambda p: np.savez(p / "b.npz", images=np.zeros((2, 8, 8))) or p / "b.npz", "needs an array x"),
    (lambda p: np.savez(p / "c.npz", x=np.zeros((2, 1, 5, 5), np.float32)) or p / "c.npz", "shape"),
    (lambda p: np.savez(p / "d.npz", x=np.full((2, 1, 8, 8), 2.0, np.float32)) or p / "d.npz", r"\[0, 1\]"),
    (lambda p: np.savez(p / "e.npz", x=np.zeros((2, 8, 8, 1), np.uint8), y=np.array([0, 10])) or p / "e.npz",
     "label 10"),
    (lambda p: np.savez(p / "f.npz", x=np.zeros((2, 8, 8, 1), np.uint8), y=np.array([0])) or p / "f.npz",
     "one label per image"),
    (lambda p: (p / "g.pt").write_bytes(b"garbage") and p / "g.pt", "weights_only"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "no .png"),
])
def test_bad_samples_are_one_line_errors(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(BenchError, match=message):
        samples_command.read_samples(path, (1, 8, 8), 10)


def test_cli_bad_input_exit_2_one_line(tmp_path, capsys):
    code = cli.main(["samples", str(tmp_path / "nope.npz"), "--dataset", "digits", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: samples not found") and "\n" not in err


def test_cli_samples_writes_results(tmp_path, tiny, small, capsys):
    name, ds = small
    p = tmp_path / "s.npz"
    np.savez(p, x=(ds.train.x[:12, 0] * 255).round().to(torch.uint8).numpy())  # uint8 (N, H, W), no labels
    out = tmp_path / "out"
    code = cli.main(["samples", str(p), "--dataset", name, "--out", str(out), "--fid-extractor", TINY,
                     "--device", "cpu"])
    printed = capsys.readouterr().out
    assert code == 0 and "kid_mean" in printed and "diversity_ssim" in printed
    res = json.loads((out / "results.json").read_text())
    assert res["run"]["config"]["fid_extractor"] == TINY and res["model"]["samples"]["labels"] is False
    assert res["metrics"]["kid_mean"]["details"]["kid_subset_size"] == 12


def test_samples_page_shows_the_submitted_images_and_its_own_table(tmp_path, tiny, small):
    name, ds = small
    path = tmp_path / "s.npz"
    x = ds.train.x[:30].clone()
    x[:, :, 0, 0] = 1.0  # a white top-left pixel in every image: visible in the grid
    np.savez(path, x=x.numpy())  # unlabelled: the first images in rows of 10
    samples_command.evaluate(path, name, tmp_path / "out", fid_extractor=TINY, device="cpu", log=lambda m: None)
    out = tmp_path / "out"
    saved = json.loads((out / "results.json").read_text())
    assert saved["metrics"]["diversity_ssim"]["details"]["grid"] == "figures/samples.png"
    from PIL import Image

    grid = Image.open(out / "figures" / "samples.png")
    assert grid.size[0] > 100 and grid.size[1] > 50
    assert "figures/samples.png" in (out / "report.html").read_text()
    table = (out / "tables" / "samples.md").read_text()
    assert "FID" in table and "SSIM" in table and f"{saved['metrics']['fid']['value']:.2f}" in table
