"""Offline encoders (bench.engines.encoders, bench.inputs.nets.vit_dinov2) and the Inception Score from a local
Inception weights file: weights files the tests make (random weights), nothing downloaded."""

import socket
import urllib.request
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F_
from torch import nn

from bench.core.errors import BenchError
from bench.engines import encoders
from bench.engines import features as F
from bench.inputs.nets.vit_dinov2 import DinoV2ViT, dinov2
from bench.metrics import generative as G
from bench.outputs import check


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """One thread, a fresh reference cache, and no network: any download attempt fails the test."""
    def no_network(*a, **k):
        raise AssertionError(f"network access attempted: {a[:1]}")

    for mod, name in ((torch.hub, "load"), (torch.hub, "load_state_dict_from_url"),
                      (torch.hub, "download_url_to_file"), (urllib.request, "urlopen"), (socket.socket, "connect")):
        monkeypatch.setattr(mod, name, no_network)
    monkeypatch.setenv("JEAT_BENCH_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    F.clear_extractor_cache()


def _randomise(net: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return net.eval()


def _images(n=2, size=8, seed=0):
    return (torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 255).to(torch.uint8)


def _by_hand(net, u8, enc):
    """torch-fidelity's preprocessing written out: TF1 bilinear to the input size, (x - 255 m) / (255 s)."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    x = interpolate_bilinear_2d_like_tensorflow1x(u8.float(), size=(enc.size, enc.size), align_corners=False)
    m = torch.tensor(enc.mean).view(1, 3, 1, 1) * 255
    s = torch.tensor(enc.std).view(1, 3, 1, 1) * 255
    with torch.no_grad():
        return net((x - m) / s)


def test_dinov2_s14_from_a_file_equals_the_network_in_memory(tmp_path):
    net = _randomise(dinov2("s14"))
    # the official dinov2_vits14 layout: 22,056,576 parameters, 12 blocks, a 37 x 37 + 1 position grid
    assert sum(p.numel() for p in net.parameters()) == 22_056_576
    sd = net.state_dict()
    assert tuple(sd["pos_embed"].shape) == (1, 1370, 384) and tuple(sd["patch_embed.proj.weight"].shape) == (384, 3, 14, 14)
    assert {"cls_token", "mask_token", "norm.weight", "blocks.11.ls2.gamma", "blocks.0.attn.qkv.bias"} <= set(sd)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(sd, path)
    ext = F.resolve_extractor("dinov2-vit-s14", extractor_weights=str(path))
    assert ext.identity == f"dinov2-vit-s14:{F.file_digests(path)['sha256']}" and ext.fid_layer == "dinov2"
    assert not ext.has_logits and "no Inception Score" in ext.no_logits
    assert F.resolve_extractor("dinov2-vit-s-14", extractor_weights=str(path)).identity == ext.identity
    u8 = _images()
    got = F.extract_features(u8, ext)["dinov2"]
    want = _by_hand(net, u8, encoders.ENCODERS["dinov2-vit-s14"])
    assert got.shape == (2, 384) and (got[0] - got[1]).abs().max() > 1e-3
    assert torch.equal(got, want)


def test_dinov2_layout_against_torch_transformer_layers():
    """A small ViT of the same layout against an independent forward: conv patches as a matmul of
    unfolded patches, DINOv2's interpolated position grid, torch.nn.TransformerEncoderLayer
    (pre-norm, exact GELU, eps 1e-6) with the LayerScale gammas folded into its output weights."""
    torch.manual_seed(0)
    net = _randomise(DinoV2ViT(dim=32, depth=2, heads=4, patch=7, img=28))  # a 4 x 4 grid
    x = torch.randn(3, 3, 35, 35)  # a 5 x 5 grid: the position embedding is interpolated
    p = net.patch_embed.proj
    t = F_.unfold(x, 7, stride=7).transpose(1, 2) @ p.weight.flatten(1).T + p.bias
    pos = net.pos_embed[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    pos = F_.interpolate(pos, scale_factor=(5.1 / 4, 5.1 / 4), mode="bicubic").permute(0, 2, 3, 1).reshape(1, 25, 32)
    t = torch.cat([net.cls_token.expand(3, -1, -1), t], 1) + torch.cat([net.pos_embed[:, :1], pos], 1)
    for blk in net.blocks:
        layer = nn.TransformerEncoderLayer(32, 4, 128, dropout=0.0, activation="gelu", layer_norm_eps=1e-6,
                                           batch_first=True, norm_first=True).eval()
        with torch.no_grad():
            layer.self_attn.in_proj_weight.copy_(blk.attn.qkv.weight)
            layer.self_attn.in_proj_bias.copy_(blk.attn.qkv.bias)
            layer.self_attn.out_proj.weight.copy_(blk.ls1.gamma[:, None] * blk.attn.proj.weight)
            layer.self_attn.out_proj.bias.copy_(blk.ls1.gamma * blk.attn.proj.bias)
            layer.linear1.load_state_dict(blk.mlp.fc1.state_dict())
            layer.linear2.weight.copy_(blk.ls2.gamma[:, None] * blk.mlp.fc2.weight)
            layer.linear2.bias.copy_(blk.ls2.gamma * blk.mlp.fc2.bias)
            layer.norm1.load_state_dict(blk.norm1.state_dict())
            layer.norm2.load_state_dict(blk.norm2.state_dict())
        with torch.no_grad():
            t = layer(t)
    want = F_.layer_norm(t, (32,), net.norm.weight, net.norm.bias, 1e-6)[:, 0]
    with torch.no_grad():
        torch.testing.assert_close(net(x), want, rtol=1e-4, atol=1e-5)


def test_strict_loading_names_the_key(tmp_path):
    enc = encoders.register(encoders.Encoder("dinov2-test-tiny", lambda: DinoV2ViT(16, 1, 2, 7, 28), "dinov2"))
    sd = _randomise(enc.build()).state_dict()
    cases = {"missing keys: norm.bias": {k: v for k, v in sd.items() if k != "norm.bias"},
             "unexpected keys: head.weight": dict(sd, **{"head.weight": torch.zeros(2)}),
             r"shapes differ: cls_token \(1, 1, 8\)": dict(sd, cls_token=torch.zeros(1, 1, 8))}
    for i, (msg, state) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.pth"
        torch.save(state, path)
        with pytest.raises(BenchError, match=msg):
            F.extract_features(_images(1), F.resolve_extractor("dinov2-test-tiny", extractor_weights=str(path)))
        F.clear_extractor_cache()
    pickled = tmp_path / "pickled.pth"
    torch.save({"net": SimpleNamespace(a=1)}, pickled)  # not loadable with weights_only=True
    with pytest.raises(BenchError, match="not loadable"):
        encoders.read_state(pickled)
    from safetensors.torch import save_file

    save_file(sd, str(tmp_path / "w.safetensors"))  # safetensors, and a {"state_dict": ...} wrapper, load too
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, tmp_path / "wrapped.pth")
    for name in ("w.safetensors", "wrapped.pth"):
        state = encoders.read_state(tmp_path / name)
        assert state.keys() == sd.keys() and all(torch.equal(state[k], sd[k]) for k in sd)


def test_clip_visual_tower_against_torch_fidelitys_own(tmp_path):
    """A small CLIP ViT (the layout of ViT-B/32, fewer layers) from a full CLIP state dict (text
    tower included, dropped) against torch-fidelity's FeatureExtractorCLIP built from the same
    dict (its build_model infers the shapes; weights fp16-representable, as it rounds them)."""
    import torch_fidelity.feature_extractor_clip as tfc

    enc = encoders.register(encoders.Encoder("clip-test-tiny", lambda: encoders._ClipVisual(32, 64, 2, 32), "clip",
                                             224, *encoders.CLIP_NORM, drop=encoders._clip_drop))
    visual = _randomise(enc.build())
    sd = {k: v.half().float() for k, v in visual.state_dict().items()}
    full = dict(sd, text_projection=torch.zeros(16, 32), logit_scale=torch.tensor(4.6),
                **{"transformer.resblocks.0.ln_1.weight": torch.ones(16), "ln_final.weight": torch.ones(16)})
    path = tmp_path / "clip-tiny.pt"
    torch.save(full, path)
    ext = F.resolve_extractor("clip-test-tiny", extractor_weights=str(path))
    u8 = _images(3, 16)
    ours = F.extract_features(u8, ext)["clip"]
    with mock.patch.object(tfc, "load_state_dict_from_url", lambda *a, **k: SimpleNamespace(state_dict=lambda: dict(full))):
        theirs_fe = tfc.FeatureExtractorCLIP("clip-vit-b-32", ["clip"]).eval()
    with torch.no_grad():
        theirs = theirs_fe(u8)[0]
    assert ours.shape == (3, 32) and (ours[0] - ours[1]).abs().max() > 1e-4
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    # the full-size tower: the 87,849,216 parameters of CLIP ViT-B/32's visual
    assert sum(p.numel() for p in encoders.ENCODERS["clip-vit-b32"].build().parameters()) == 87_849_216


def test_names_without_weights_are_refused_and_nothing_downloads(tmp_path):
    for name in ("dinov2-vit-s14", "clip-vit-b-32", "vgg16"):
        with pytest.raises(BenchError, match="needs --extractor-weights"):
            F.resolve_extractor(name)
    with pytest.raises(BenchError, match="downloads its network"):
        F.resolve_extractor("clip-rn50")
    with pytest.raises(BenchError, match="not found"):
        F.resolve_extractor("dinov2-vit-s14", extractor_weights=str(tmp_path / "missing.pth"))


def test_check_refuses_features_of_another_extractor():
    def res(identity):
        return SimpleNamespace(metrics={"fid": SimpleNamespace(details={"extractor_identity": identity}),
                                        "accuracy": SimpleNamespace(details={})})

    assert check.extractor_differences(res("a:1"), res("a:1")) == []
    diff = check.extractor_differences(res("fid-helper-default_1:x"), res("dinov2-vit-s14:y"))
    assert len(diff) == 1 and "fid's feature extractor" in diff[0] and "dinov2-vit-s14:y" in diff[0]


def test_inception_score_offline_from_a_local_weights_file(tmp_path):
    """``is_mean`` from a local torch-fidelity InceptionV3 state dict (random weights, torch.save):
    the group's IS equals the textbook exp(E_x KL(p(y|x) || p(y))) per split (torch-fidelity's 10
    splits of its seed-2020 permutation) on the same network's logits.  The logits the group
    scored are checked against the network itself on two of the images (InceptionV3 at 299 x 299
    is the test's cost), and the FID reference is two training images (the IS needs none)."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    from bench.inputs import data
    from bench.metrics.context import with_generated
    from tests.conftest import tiny_model
    from tests.test_generative import ctx_for

    torch.manual_seed(0)
    with mock.patch.object(nn.Module, "load_state_dict", lambda self, *a, **k: None), \
            mock.patch.object(tfi, "load_state_dict_from_url", lambda *a, **k: {}):
        inc = tfi.FeatureExtractorInceptionV3("random", ["logits_unbiased"]).eval()
    with torch.no_grad():
        for mod in inc.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
        inc.fc.weight.mul_(30)  # peaked enough that the score is well above 1
    weights = tmp_path / F.INCEPTION_FILE
    torch.save(inc.state_dict(), weights)
    ds = data.load("digits")
    small = data.Dataset("digits-small", data.Split(ds.train.x[:2], ds.train.y[:2]), ds.test, 10)
    ctx = ctx_for(tiny_model(), small, tmp_path / "run", n_gen=20, gen_steps=2, gen_init="uniform",
                  inception_weights=str(weights))
    seen = []  # (images, features) of each extraction the group makes: the reference's, then the generated set's
    extract = F.extract_features

    def spy(u8, *a, **k):
        seen.append((u8, extract(u8, *a, **k)))
        return seen[-1][1]

    with mock.patch.object(F, "extract_features", spy):
        res = G.generative_group(ctx)
    assert res["is_mean"].value is not None and res["is_mean"].details["extractor"] == F.FE_INCEPTION
    gx = with_generated(ctx).generation.x  # the set the group scored (made once per run)
    u8, feats = seen[-1]
    assert torch.equal(u8, F.to_uint8_rgb(gx))
    logits = feats[F.ISC_LAYER].double()
    assert logits.shape == (20, 1008)
    with torch.no_grad():  # the group's logits are the network's (that of the weights file)
        torch.testing.assert_close(inc(u8[[0, 13]])[0].double(), logits[[0, 13]], rtol=1e-4, atol=1e-4)
    logits = logits[np.random.RandomState(2020).permutation(len(logits))]
    scores = []
    for part in logits.chunk(10):
        p = torch.softmax(part, 1)
        py = p.mean(0, keepdim=True)
        scores.append(torch.exp((p * (p.log() - py.log())).sum(1).mean()).item())
    assert min(scores) > 1.0 and max(scores) > 1.01  # two images a split: not the degenerate 1
    assert res["is_mean"].value == pytest.approx(float(np.mean(scores)), rel=1e-5)
    assert res["is_std"].value == pytest.approx(float(np.std(scores)), rel=1e-4, abs=1e-9)
