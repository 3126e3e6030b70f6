"""benchmarks/gpu_check.py on the CPU (--tiny): every group of a suite timed, and its FLOPs equal to
a count by hand of the work the group does."""

import importlib.util
from pathlib import Path

import torch
from torch import nn

from bench.inputs import nets

ROOT = Path(__file__).resolve().parent.parent


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def forward_flops_by_hand(net: nn.Module, shape) -> int:
    """2 * multiply-adds of every convolution and linear layer of one image's forward pass, from
    the layers' sizes and their output shapes (a forward hook records only the shapes)."""
    total = 0

    def count(m, inputs, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            k = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            total += 2 * k * out.shape[1] * out.shape[2] * out.shape[3]
        elif isinstance(m, nn.Linear):
            total += 2 * m.in_features * m.out_features

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        net(torch.zeros(1, *shape))
    for h in hooks:
        h.remove()
    return total


def test_tiny_check_times_every_group_and_counts_the_landscapes_forward_passes(tmp_path, monkeypatch, capsys, one_thread):
    gc = _gpu_check()
    monkeypatch.setenv("JEAT_BENCH_CACHE", "untouched")
    rows, walls = gc.run_suites(tmp_path, gc.TINY, ["landscape"], torch.device("cpu"), log=lambda *a, **k: None)
    assert [r["group"] for r in rows] == ["landscape"] and list(walls) == ["landscape"]
    assert 0 < rows[0]["seconds"] <= walls["landscape"]
    # the landscape: resolution^2 grid points plus the centre, per image, one forward pass each
    s = gc.TINY["settings"]
    images = s["landscape_images"] * (s["landscape_resolution"] ** 2 + 1)
    per_image = forward_flops_by_hand(nets.build(gc.TINY["arch"], 10, 3), (3, 32, 32))
    assert rows[0]["flops"] == images * per_image
    import os

    assert os.environ["JEAT_BENCH_CACHE"] == "untouched"  # the check's own cache only while it ran
    text = gc.table(rows, walls, "head", gc.PEAKS["H100"])
    tflops = rows[0]["flops"] / 1e12 / rows[0]["seconds"]
    assert f"| landscape | landscape | {rows[0]['seconds']:.2f} |" in text
    assert f"| {100 * tflops / 494.7:.2f} | {100 * tflops / 66.9:.2f} |" in text


def test_unknown_suite_and_missing_cuda_are_one_line_errors(capsys):
    gc = _gpu_check()
    assert gc.main(["--tiny", "--suites", "robust,nosuch"]) == 2
    assert capsys.readouterr().err == ("error: unknown suite 'nosuch'; choose from robust, calibration, generative, "
                                       "score, memorization, landscape, denoise, ood\n")
    if not torch.cuda.is_available():
        assert gc.main([]) == 2 and "no CUDA device" in capsys.readouterr().err
