"""OOD detection: the measures against scikit-learn, the scores against hand computations, the
shape rule against PIL, the OOD sets, and one end-to-end run on a released digits model."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from torch import nn

from bench.cli import main
from bench.core.energy import EnergyModel
from bench.core.errors import BenchError
from bench.core.roc import auroc
from bench.engines import ood_scores
from bench.inputs import ood_data, zoo
from bench.metrics import ood

pytestmark = pytest.mark.usefixtures("one_thread")


def _cases():
    rng = np.random.RandomState(0)
    yield rng.randn(40), rng.randn(55) - 0.7  # no ties
    yield np.round(rng.randn(60), 1), np.round(rng.randn(45) - 0.5, 1)  # many ties, within and across
    yield np.round(rng.rand(30) * 3), np.round(rng.rand(33) * 3)  # four levels only
    yield np.ones(7), np.ones(5)  # everything tied
    yield np.array([0.3, 0.9, 0.9, 0.5]), np.array([0.9, 0.1, 0.5, 0.5, 0.2])


@pytest.mark.parametrize("s_in,s_out", list(_cases()))
def test_measures_equal_scikit_learn(s_in, s_out):
    scores = np.r_[s_in, s_out]
    is_in = np.r_[np.ones(len(s_in), bool), np.zeros(len(s_out), bool)]
    fpr, tpr, _ = roc_curve(is_in, scores, drop_intermediate=False)
    expected = {"auroc": roc_auc_score(is_in, scores),
                "aupr_in": average_precision_score(is_in, scores),
                "aupr_out": average_precision_score(~is_in, -scores),
                "fpr95": fpr[np.argmax(tpr >= 0.95)]}
    got = ood_scores.ood_measures(torch.tensor(s_in), torch.tensor(s_out))
    for m, v in expected.items():
        assert got[m][0] == pytest.approx(v, abs=1e-9), m


def test_delong_standard_error_by_pairs():
    rng = np.random.RandomState(1)
    a, b = np.round(rng.randn(23), 1), np.round(rng.randn(17) - 0.4, 1)
    psi = (a[:, None] > b[None, :]) + 0.5 * (a[:, None] == b[None, :])  # every pair, by hand
    v10, v01 = psi.mean(1), psi.mean(0)
    se = np.sqrt(v10.var(ddof=1) / len(a) + v01.var(ddof=1) / len(b))
    auc, got = auroc(a, b)
    assert auc == pytest.approx(psi.mean(), abs=1e-12)
    assert got == pytest.approx(se, abs=1e-12)


def test_scores_of_a_linear_model_by_hand():
    # f(x) = W vec(x) + c: d logsumexp f / dx = W^T softmax(f), so every score has a closed form
    torch.manual_seed(0)
    lin = nn.Linear(12, 5).double()
    model = EnergyModel(nn.Sequential(nn.Flatten(), lin), input_shape=(3, 2, 2), num_classes=5).double()
    x = torch.rand(6, 3, 2, 2, dtype=torch.float64)
    f = x.flatten(1) @ lin.weight.T + lin.bias
    p = torch.softmax(f, 1)
    grad = p @ lin.weight  # (N, 12)
    got = ood_scores.scores(model, x)
    torch.testing.assert_close(got["px"], torch.logsumexp(f, 1), atol=1e-12, rtol=0)
    torch.testing.assert_close(got["py"], p.max(1).values, atol=1e-12, rtol=0)
    torch.testing.assert_close(got["pxgrad"], -grad.norm(dim=1), atol=1e-12, rtol=0)


def test_pxgrad_equals_per_image_autograd(model):
    x = torch.rand(5, 1, 8, 8)
    got = ood_scores.scores(model, x, ["pxgrad"])["pxgrad"]
    for i in range(5):  # one image at a time: no batch coupling can hide
        xi = x[i:i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(torch.logsumexp(model.logits(xi), 1).sum(), xi)
        assert got[i].item() == pytest.approx(-g.norm().item(), rel=1e-5)


def test_attack_raises_each_score_inside_the_ball(model):
    x = torch.rand(8, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    for sc in ood.SCORES:
        adv = ood_scores.raise_score(model, x, sc, 0.1, 10, 0.025, g)
        assert (adv - x).abs().max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
        before, after = ood_scores.scores(model, x, [sc])[sc], ood_scores.scores(model, adv, [sc])[sc]
        assert after.mean() > before.mean(), sc


@pytest.mark.parametrize("src,dst", [((28, 28), (8, 8)), ((8, 8), (32, 32)), ((10, 7), (4, 5))])
def test_resize_equals_pil_bilinear(src, dst):
    x = torch.rand(2, 1, *src, generator=torch.Generator().manual_seed(0))
    got = ood_data.to_shape(x, (1, *dst))
    for i in range(2):
        pil = Image.fromarray(x[i, 0].numpy(), mode="F").resize(dst[::-1], Image.BILINEAR)
        np.testing.assert_allclose(got[i, 0].numpy(), np.asarray(pil), atol=1e-6)


def test_channel_rule():
    rgb = torch.zeros(3, 3, 2, 2)
    rgb[0, 0], rgb[1, 1], rgb[2, 2] = 1, 1, 1  # pure red, green, blue images
    grey = ood_data.to_shape(rgb, (1, 2, 2))
    assert grey[:, 0, 0, 0].tolist() == pytest.approx([0.299, 0.587, 0.114], abs=1e-7)
    g = torch.rand(2, 1, 4, 4)
    torch.testing.assert_close(ood_data.to_shape(g, (3, 4, 4)), g.expand(-1, 3, -1, -1))
    with pytest.raises(BenchError, match="channels"):
        ood_data.to_shape(torch.rand(1, 4, 4, 4), (3, 4, 4))


def test_parse_names_and_errors(tmp_path):
    np.savez(tmp_path / "My Set-1.npz", x=np.zeros((3, 8, 8), np.uint8))
    specs = ood_data.parse(f"uniform,fashion-mnist,npz:{tmp_path / 'My Set-1.npz'}")
    assert [s.name for s in specs] == ["uniform", "fashion_mnist", "my_set_1"]
    assert [s.name for s in ood_data.parse(None)] == ["uniform", "interp"]
    for bad, msg in (("bogus", "unknown set"), (f"npz:{tmp_path / 'none.npz'}", "not found"),
                     ("uniform,uniform", "both named"), (f"folder:{tmp_path / 'no'}", "not found")):
        with pytest.raises(BenchError, match=msg):
            ood_data.parse(bad)


def test_builtin_sets(digits):
    n = 20

    def draw(name, seed=0):
        return ood_data.load(ood_data.parse(name)[0], digits, n, torch.Generator().manual_seed(seed))[0]

    for name in ood_data.BUILTIN:
        x = draw(name)
        assert x.shape == (n, 1, 8, 8) and x.min() >= 0 and x.max() <= 1, name
        torch.testing.assert_close(x, draw(name))  # the seed fixes the set
    assert not torch.equal(draw("uniform", 0), draw("uniform", 1))
    torch.testing.assert_close(draw("inverted"), 1 - digits.test.x[:n])
    torch.testing.assert_close(draw("vflip")[:, :, 0], digits.test.x[:n, :, -1])
    c = draw("constant")
    assert (c.flatten(1) == c.flatten(1)[:, :1]).all() and c.flatten(1)[:, 0].unique().numel() == n
    # interp: each image is the mean of test image i and another test image
    x = draw("interp")
    resid = (2 * x - digits.test.x[:n]).flatten(1)  # = the partner image
    dist = torch.cdist(resid, digits.test.x.flatten(1))
    partner = dist.argmin(1)
    assert torch.allclose(dist.min(1).values, torch.zeros(n), atol=1e-5)
    assert (partner != torch.arange(n)).all()


def test_npz_set_in_rgb_is_made_grey_and_resized(digits, tmp_path):
    rgb = np.random.RandomState(0).randint(0, 256, (5, 16, 16, 3)).astype(np.uint8)
    np.savez(tmp_path / "rgb.npz", x=rgb)
    x, info = ood_data.load(ood_data.parse(f"npz:{tmp_path / 'rgb.npz'}")[0], digits, 10, torch.Generator())
    expected = ood_data.to_shape(torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255, (1, 8, 8))
    assert x.shape == (5, 1, 8, 8) and info["n"] == 5 and info["original_shape"] == [3, 16, 16]
    torch.testing.assert_close(x, expected)


def test_end_to_end_on_the_released_jeat_model(tmp_path, capsys, digits):
    from bench.inputs import checkpoints

    path = zoo.models_dir() / "digits" / "digits-jeat.safetensors"
    out = tmp_path / "run"
    args = ["run", "--model", str(path), "--suite", "ood", "--n-eval", "30", "--ood", "uniform,inverted",
            "--ood-scores", "px,pxgrad", "--pgd-steps", "3", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    m = res["metrics"]
    names = {f"ood{a}_{k}_{s}_{o}" for a in ("", "_adv") for k in ood.MEASURES for s in ("px", "pxgrad")
             for o in ("uniform", "inverted")}
    assert set(m) == names
    assert res["run"]["config"]["ood"] == "uniform,inverted"
    # the in-distribution px scores and the inverted set, by hand, give the recorded AUROC
    model = checkpoints.load(str(path)).model.eval()
    with torch.no_grad():
        s_in = torch.logsumexp(model.logits(digits.test.x[:30]), 1).double()
        s_out = torch.logsumexp(model.logits(1 - digits.test.x[:30]), 1).double()
    labels = np.r_[np.ones(30), np.zeros(30)]
    assert m["ood_auroc_px_inverted"]["value"] == pytest.approx(roc_auc_score(labels, np.r_[s_in, s_out]), abs=1e-6)
    # the attack makes detection no easier
    for o in ("uniform", "inverted"):
        assert m[f"ood_adv_auroc_px_{o}"]["value"] <= m[f"ood_auroc_px_{o}"]["value"] + 1e-9
    for f in ("ood_px.png", "ood_pxgrad.png", "ood_adv_px.png"):
        assert (out / "figures" / f).is_file()
    assert (out / "tables" / "ood.md").is_file() and "inverted px" in (out / "tables" / "ood.md").read_text()
    # a rerun reuses both groups; another set recomputes
    capsys.readouterr()
    assert main(args) == 0
    assert json.loads((out / "results.json").read_text())["run"]["cache"]["hits"] == ["ood", "ood_adv"]
    assert main(args[:-2] + ["--ood", "vflip", "--pgd-steps", "1", "--out", str(out)]) == 0
    assert "ood_auroc_px_vflip" in json.loads((out / "results.json").read_text())["metrics"]


def test_bad_ood_options_are_one_line_errors(tmp_path, capsys):
    for extra in (["--ood", "bogus"], ["--ood-scores", "px,nope"], ["--n-ood", "0"], ["--ood", "svhn",
                  "--data-root", str(tmp_path)]):
        code = main(["run", "--suite", "ood", "--n-eval", "5", "--out", str(tmp_path / "o"), *extra])
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert code == 2 and len(errors) == 1 and err.splitlines()[-1] == errors[0], (extra, err)  # no traceback


def test_a_changed_ood_file_is_not_served_from_the_cache(tmp_path, digits):
    """The cache keys each OOD set by its images: the same npz: path with other images recomputes
    (before, 1.0 was served where a fresh run gave about 0.5)."""
    from bench.pipeline import runner

    f = tmp_path / "other.npz"
    flat = np.full((20, 8, 8), 0.0, np.float32)  # far from the digits: AUROC of px, py high
    np.savez(f, x=flat)
    kw = dict(suite="ood", out=tmp_path / "run", device="cpu", log=lambda m: None)
    settings = {"n_eval": 20, "ood": f"npz:{f}", "ood_scores": "px"}
    first = runner.run(str(zoo.released_path("jeat")), settings=settings, **kw)
    np.savez(f, x=digits.test.x[:20, 0].numpy())  # now the in-distribution images themselves
    again = runner.run(str(zoo.released_path("jeat")), settings=settings, **kw)
    assert again.run["cache"]["computed"] == ["ood", "ood_adv"] and not again.run["cache"]["hits"]
    assert again.metrics["ood_auroc_px_other"].value == 0.5  # identical images: every pair a tie
    assert first.metrics["ood_auroc_px_other"].value != 0.5
    third = runner.run(str(zoo.released_path("jeat")), settings=settings, **kw)
    assert third.run["cache"]["hits"] == ["ood", "ood_adv"]  # the same images: cached


def test_ood_adv_scores_both_sides_through_one_path_under_bf16(tmp_path, digits):
    """Under --amp bf16, eps 0 (the attack moves nothing) and the in-distribution images as the OOD
    set, both sides are the same images: every AUROC is exactly 1/2.  Before, the in-distribution
    px/py came from float32 logits (beside pxgrad's gradient) and the attacked points' from bf16."""
    from bench.pipeline import runner

    f = tmp_path / "same.npz"
    np.savez(f, x=digits.test.x[:30, 0].numpy())
    res = runner.run(str(zoo.released_path("jeat")), suite="ood", out=tmp_path / "run", device="cpu",
                     log=lambda m: None, settings={"n_eval": 30, "ood": f"npz:{f}", "eps": 0.0, "amp": "bf16",
                                                   "pgd_steps": 2})
    for sc in ("px", "py"):
        assert res.metrics[f"ood_adv_auroc_{sc}_same"].value == 0.5, sc
        assert res.metrics[f"ood_auroc_{sc}_same"].value == 0.5, sc
    # pxgrad is float32 on both sides (a gradient); the attack's copy of an image may round its
    # input gradient in the last bit differently, which moves the AUROC by a tie or two at most
    assert res.metrics["ood_adv_auroc_pxgrad_same"].value == pytest.approx(0.5, abs=2 / 900)
