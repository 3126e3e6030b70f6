"""Reference statistics files (bench.engines.refstats): `bench ref-stats`, `--ref-stats`, shipped statistics."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import cli
from bench.core.errors import BenchError
from bench.engines import features as F
from bench.engines import refstats
from bench.engines import sample_quality as Q
from bench.inputs import checkpoints
from bench.pipeline import runner
from bench.runtime.execution import Execution
from tests.conftest import tiny_model
from tests.test_generative import META, TINY, digits_npz, tiny_extractors


@pytest.fixture(autouse=True)
def _cache_and_threads(fid_cache_one_thread):
    yield


@pytest.fixture(scope="module")
def tiny():
    return tiny_extractors()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return digits_npz(tmp_path_factory.mktemp("small"), 10)


def _shipped_digits() -> Path:
    files = sorted(refstats.shipped_dir().glob("digits-train*.npz"))
    assert files, f"no shipped digits statistics in {refstats.shipped_dir()}"
    return files[0]


def test_shipped_digits_statistics_equal_a_recomputation_within_float16(digits):
    """The shipped features of the digits training split are fid-helper's Inception features of
    exactly those images: 16 rows recomputed here agree to float16's rounding (2^-11 relative)."""
    path = _shipped_digits()
    ext = F.resolve_extractor("fid-helper")
    with np.load(path, allow_pickle=False) as z:
        meta, feats = json.loads(str(z["meta"])), z["features"]
    u8 = F.to_uint8_rgb(digits.train.x)
    key, _ = refstats._reference_key(u8, ext, "digits", "train")
    assert all(meta[k] == key[k] for k in refstats.MATCH_FIELDS)  # images, extractor, layer, pipeline
    assert feats.dtype == np.float16 and feats.shape == (len(digits.train), 2048)
    assert path.stat().st_size < 6e6
    rows = torch.linspace(0, len(u8) - 1, 16).round().long()
    fresh = F.extract_features(u8[rows], ext, Execution("cpu", 16))[ext.fid_layer].double()
    shipped = torch.from_numpy(feats[rows.numpy()].astype(np.float64))
    err = (shipped - fresh).abs()
    # float16 rounding (half an ulp: 2^-11 relative) plus float32 differences between batchings
    assert (err <= 2.0**-11 * fresh.abs() + 1e-5 * fresh.abs().max() + 3e-8).all(), err.max()
    # and the statistics the runner takes from them: the shipped file, no feature extraction
    calls = []
    real = F.extract_features
    F.extract_features = lambda x, *a, **k: calls.append(len(x)) or real(x, *a, **k)
    try:
        stats, ref_feats, info = refstats.reference_features(digits.train.x, ext, "digits", "train")
    finally:
        F.extract_features = real
    assert info["cache"] == "shipped" and Path(info["file"]) == path and calls == []
    assert torch.equal(ref_feats, torch.from_numpy(feats.astype(np.float32)))
    np.testing.assert_allclose(stats["mu"], feats.astype(np.float64).mean(0), rtol=1e-5, atol=1e-7)


def test_shipped_statistics_used_only_for_the_same_images_and_extractor(tmp_path, tiny, small, monkeypatch):
    ext, ext1 = tiny
    _, ds = small
    x = ds.train.x
    stats, feats, info = refstats.reference_features(x, ext, "small", "train")
    assert info["cache"] == "miss"
    ship = tmp_path / "ship"
    refstats.write_file(ship / "small-train.npz", info["key"], stats, feats, mu_sigma=False, precision="float16")
    monkeypatch.setattr(refstats, "shipped_dir", lambda: ship)
    s2, f2, i2 = refstats.reference_features(x, ext, "renamed", "train")  # the name is not compared
    assert i2["cache"] == "shipped" and torch.equal(f2, feats.half().float())
    assert refstats.reference_features(x.flip(-1), ext, "small", "train")[2]["cache"] == "miss"  # other images
    assert refstats.reference_features(x, ext1, "small", "train")[2]["cache"] == "miss"  # other extractor
    assert refstats.reference_features(x, ext, "small", "test")[2]["cache"] == "miss"  # other split


def _run(model, out, **settings):
    base = {"n_gen": 20, "gen_steps": 3, "fid_extractor": TINY}
    return runner.run(str(model), "generative", out, dataset="digits", device="cpu", log=lambda m: None,
                      settings=base | settings)


def test_ref_stats_file_gives_the_same_numbers_as_the_cache_path(tmp_path, tiny, capsys):
    ckpt = tmp_path / "m.safetensors"
    checkpoints.save(ckpt, tiny_model(), META)
    cached = _run(ckpt, tmp_path / "a").metrics
    assert cached["fid"].details["reference_cache"] == "miss"
    # the samples' grid is recorded with the results, whence report.html takes it
    assert cached["diverged_fraction"].details["grid"] == "samples/grid.png"
    assert 'alt="samples/grid.png"' in (tmp_path / "a" / "report.html").read_text()
    for m in ("fid", "kid_mean", "kid_std", "precision", "recall", "diversity_ssim"):
        assert cached[m].value is not None, m
    f = tmp_path / "stats.npz"
    assert cli.main(["ref-stats", "--dataset", "digits", "--out", str(f), "--fid-extractor", TINY,
                     "--device", "cpu"]) == 0
    assert "wrote" in capsys.readouterr().out
    with np.load(f) as z:  # what pytorch-fid and clean-fid read
        assert z["mu"].shape == (32,) and z["sigma"].shape == (32, 32) and z["features"].shape == (1347, 32)
        assert str(z["extractor"]) == tiny[0].identity
    viafile = _run(ckpt, tmp_path / "b", ref_stats=str(f))
    assert viafile.run["config"]["ref_stats"] == str(f)
    for m in ("fid", "kid_mean", "kid_std", "precision", "recall", "is_mean"):
        assert viafile.metrics[m].value == cached[m].value, m
    d = viafile.metrics["fid"].details
    assert d["reference_cache"] == "file" and d["reference_sha256"] == F.file_digests(f)["sha256"]
    assert "reference_note" not in d
    # the setting keys the cache: a run into the same directory without it recomputes the group
    again = _run(ckpt, tmp_path / "b")
    assert again.run["cache"]["computed"] == ["is_fid"]
    assert again.metrics["fid"].details["reference_cache"] == "hit"


def test_ref_stats_file_of_another_extractor_is_refused_and_plain_mu_sigma_accepted(tmp_path, tiny, small):
    ext, ext1 = tiny
    _, ds = small
    other = tmp_path / "other.npz"
    stats1, feats1, info1 = refstats.reference_features(ds.train.x, ext1, "small", "train")
    refstats.write_file(other, info1["key"], stats1, feats1)
    gen = ds.train.x[:30]
    with pytest.raises(BenchError, match="were made with extractor .*seed1.* this run uses .*seed0") as e:
        Q.fid_is(gen, ds.train.x, ext, "small", ref_stats=str(other))
    assert "\n" not in str(e.value)
    # a plain mu/sigma file (pytorch-fid's keys): FID as from the cache, a note; KID/PR null with the reason
    stats, _, _ = refstats.reference_features(ds.train.x, ext, "small", "train")
    plain = tmp_path / "plain.npz"
    np.savez(plain, mu=stats["mu"].astype(np.float64), sigma=stats["sigma"])
    r = Q.fid_is(gen, ds.train.x, ext, "small", ref_stats=str(plain))
    base = Q.fid_is(gen, ds.train.x, ext, "small")
    assert base["reference"]["cache"] == "hit"
    assert r["fid"] == pytest.approx(base["fid"], rel=1e-6) and r["features_reference"] is None
    res = Q.fid_is_results(r, ext, len(gen), {})
    assert "not recorded" in res["fid"].details["reference_note"]
    for m in Q.FEATURE_METRICS:
        assert res[m].value is None and "mu/sigma only" in res[m].reason
    # bad files: one line each
    bad = tmp_path / "bad.npz"
    np.savez(bad, mu=np.zeros(3), sigma=np.zeros((2, 2)))
    with pytest.raises(BenchError, match="do not fit"):
        Q.fid_is(gen, ds.train.x, ext, "small", ref_stats=str(bad))
    wrong_dim = tmp_path / "dim.npz"
    np.savez(wrong_dim, mu=np.zeros(5), sigma=np.eye(5))
    with pytest.raises(BenchError, match="dimension 5"):
        Q.fid_is(gen, ds.train.x, ext, "small", ref_stats=str(wrong_dim))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(BenchError, match="not a readable"):
        Q.fid_is(gen, ds.train.x, ext, "small", ref_stats=str(tmp_path / "junk.npz"))
    assert cli.main(["run", "--ref-stats", str(tmp_path / "missing.npz")]) == 2


def test_n_ref_takes_the_first_training_images_as_the_reference(tmp_path, tiny, capsys, digits):
    """--n-ref N: FID/KID/PR/diversity against the first N training images, i.e. the numbers of
    fid_is on the generated images and train.x[:N] given explicitly, not the whole split's."""
    ckpt = tmp_path / "m.safetensors"
    checkpoints.save(ckpt, tiny_model(), META)
    full = _run(ckpt, tmp_path / "full").metrics
    sub = _run(ckpt, tmp_path / "sub", n_ref=300).metrics
    assert sub["fid"].details["n_reference"] == 300 and full["fid"].details["n_reference"] == 1347
    with np.load(tmp_path / "sub" / "samples" / "samples.npz") as z:
        gen = torch.from_numpy(z["x"]).float()
    ext = tiny[0]
    explicit = Q.fid_is(gen, digits.train.x[:300], ext, "digits", run=Execution("cpu"))
    assert sub["fid"].value == pytest.approx(explicit["fid"], rel=1e-6)
    assert abs(sub["fid"].value - full["fid"].value) > 1e-3  # really another reference
    f = tmp_path / "s300.npz"
    assert cli.main(["ref-stats", "--dataset", "digits", "--out", str(f), "--fid-extractor", TINY,
                     "--n-ref", "300", "--device", "cpu"]) == 0
    with np.load(f) as z:
        assert z["features"].shape == (300, 32)
    capsys.readouterr()
    assert cli.main(["run", "--n-ref", "0", "--suite", "generative", "--out", str(tmp_path / "bad")]) == 2
    assert "n-ref must be a positive integer" in capsys.readouterr().err


def test_ref_stats_file_of_another_data_set_split_or_image_size_is_refused(tmp_path, tiny, small):
    ext, _ = tiny
    _, ds = small
    stats, feats, info = refstats.reference_features(ds.train.x, ext, "small", "train")
    assert info["key"]["image_size"] == [8, 8]
    gen = ds.train.x[:30]
    for field, value, said in (("dataset", "cifar10", "dataset cifar10"), ("split", "test", "split test"),
                               ("image_size", [32, 32], "image_size [32, 32]")):
        f = tmp_path / f"{field}.npz"
        refstats.write_file(f, dict(info["key"], **{field: value}), stats, feats)
        with pytest.raises(BenchError, match=rf"are of {re.escape(said)}, this run's reference is of") as e:
            Q.fid_is(gen, ds.train.x, ext, "small", ref_stats=str(f))
        assert "\n" not in str(e.value)
    same = tmp_path / "same.npz"
    refstats.write_file(same, info["key"], stats, feats)
    assert Q.fid_is(gen, ds.train.x, ext, "small", ref_stats=str(same))["reference"]["cache"] == "file"
    older = tmp_path / "older.npz"  # written before the image size was recorded: not compared on it
    refstats.write_file(older, {k: v for k, v in info["key"].items() if k != "image_size"}, stats, feats)
    assert Q.fid_is(gen, ds.train.x, ext, "small", ref_stats=str(older))["reference"]["cache"] == "file"
