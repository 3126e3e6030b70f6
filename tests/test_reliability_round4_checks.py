"""Reliability (issue 35, fourth round): what a run or a check reads back is held to the rules it was
written under.  An edited FID reference cache or a hand-edited kept group of an earlier run is
recomputed, never served; settings carry their sign; a baseline's n must agree with its per-point
record; an edited or malformed metric catalogue is ignored (said); a baseline's setting of the
wrong type and a baseline that is no regular file are named for what they are."""

import json

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.core import settings
from bench.core.errors import BenchError
from bench.metrics import Group, Result
from tests.test_reliability import FAST, META, fitted_tiny_model


@pytest.fixture(autouse=True)
def one_thread_own_cache(monkeypatch, tmp_path):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("JEAT_BENCH_CACHE", str(tmp_path / "jeat-cache"))
    yield
    torch.set_num_threads(n)


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = [x for x in err.splitlines() if x.startswith("error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------------------------
# settings carry their sign


SIGNED = {"pgd_step_size": "positive", "refine_step_size": "positive", "gen_step_size": "positive",
          "denoise_step_size": "positive", "landscape_radius": "positive", "denoise_var": "positive",
          "refine_noise": "non-negative", "gen_noise": "non-negative", "denoise_noise": "non-negative",
          "eps": "non-negative", "eps_grid": "non-negative"}


def test_every_number_setting_declares_its_sign():
    numbers = {st.name: st.sign for st in settings.SETTINGS if st.kind in ("number", "numbers")}
    assert numbers == SIGNED


@pytest.mark.parametrize("name", sorted(SIGNED))
def test_a_value_of_the_wrong_sign_is_refused(name):
    sign = SIGNED[name]
    bad = [0.0, -0.1] if sign == "positive" else [-0.1]
    for v in bad:
        with pytest.raises(BenchError, match=f"must be a {sign} number, got {v}"):
            settings.validate({name: [0.1, v] if name == "eps_grid" else v})
    settings.validate({name: [0.0, 0.05] if name == "eps_grid" else 0.05})  # in range: accepted
    if sign == "non-negative":
        settings.validate({name: [0.0] if name == "eps_grid" else 0.0})


@pytest.mark.parametrize("option", ["--pgd-step-size", "--refine-step-size", "--gen-step-size"])
@pytest.mark.parametrize("value", ["-0.1", "0"])
def test_bench_run_refuses_a_step_size_of_zero_or_below(tmp_path, capsys, use_groups, option, value):
    """The issue: --pgd-step-size -0.1 reported pgd20 = 1.0 (0.8 at the default step), no flag."""
    use_groups(FAST)
    out = tmp_path / "o"
    code = main(["run", "--model", "py:tests.test_reliability_round3:deterministic_model", "--dataset", "digits",
                 "--suite", "robust", "--n-eval", "10", "--device", "cpu", "--out", str(out), option, value])
    assert code == 2
    assert _one_error(capsys) == f"error: {option[2:]} must be a positive number, got {float(value)}"
    assert not (out / "results.json").exists()


# --------------------------------------------------------------------------------------------
# an edited FID reference cache is recomputed, not served


def test_an_edited_fid_reference_cache_is_recomputed(tmp_path, capsys):
    """The issue: 0.5 added to the cached mu and features (meta untouched) gave FID 603.0 instead of
    88.3, ``reference_cache: hit``, no warning."""
    from bench.engines import refstats
    from bench.engines import sample_quality as Q
    from tests.test_generative import digits_npz, tiny_extractors

    ext, _ = tiny_extractors()
    _, ds = digits_npz(tmp_path, 10)
    x = ds.train.x
    stats, feats, info = refstats.reference_features(x, ext, "small", "train")
    assert info["cache"] == "miss"
    path = next((tmp_path / "jeat-cache" / "fid-ref").glob("*.npz"))
    gen = ds.test.x[:20]
    honest = Q.fid_is(gen, x, ext, "small")["fid"]
    assert refstats.reference_features(x, ext, "small", "train")[2]["cache"] == "hit"  # untouched: served
    capsys.readouterr()

    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["mu"] = arrays["mu"] + 0.5
    arrays["features"] = arrays["features"] + 0.5
    np.savez(path, **arrays)  # the meta (and the digest, where one is written) untouched
    s2, f2, i2 = refstats.reference_features(x, ext, "small", "train")
    assert i2["cache"] == "miss"  # recomputed (and written again), never "hit"
    np.testing.assert_array_equal(s2["mu"], stats["mu"])  # the features' own mean, not mu + 0.5
    np.testing.assert_allclose(s2["mu"], feats.double().mean(0).numpy(), rtol=1e-5, atol=1e-6)
    assert torch.equal(f2, feats)
    err = capsys.readouterr().err
    assert f"warning: the FID reference cache {path} does not match the digest written with it" in err, err
    assert Q.fid_is(gen, x, ext, "small")["fid"] == honest  # the rewritten file is served again
    assert refstats.reference_features(x, ext, "small", "train")[2]["cache"] == "hit"
