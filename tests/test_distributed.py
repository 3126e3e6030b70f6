"""torchrun sharding: two gloo processes give exactly the numbers of one process."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from bench.cli import main
from bench.inputs import checkpoints
from bench.runtime import distributed
from tests.conftest import trained_model
from tests.test_runner import META


@pytest.mark.parametrize("n,w", [(10, 3), (7, 2), (1, 4), (450, 2)])
def test_shards_partition_in_order(n, w):
    parts = [distributed.shard(n, r, w) for r in range(w)]
    assert [i for p in parts for i in p] == list(range(n))


def test_single_process_helpers_are_identities():
    import torch

    t = torch.arange(5)
    assert distributed.world() == 1 and distributed.is_main() and not distributed.active()
    assert distributed.gather(t) is t and distributed.broadcast({"a": 1}) == {"a": 1}


def _settings(data, out) -> list[str]:
    # eps 0.3 on a trained model: APGD-CE breaks every AutoAttack point, so APGD-T, FAB-T and Square's
    # 5,000 queries have none left (an untrained model's flat points survived them all: 17 s a run).
    # Every group still splits its batches over both ranks (at least 2 batches of 8: 10 reference
    # images, 16 points per OOD set, 2 x 5 x 5 landscape points); what is cut is work the sharding
    # does not change: PGD steps, the landscape grid and images, the neighbour grid's figure, the
    # Langevin step counts (each rank draws every figure, so figures cost twice under torchrun)
    return ["--suite", "all", "--dataset", f"npz:{data}", "--n-aa", "12", "--eps", "0.3", "--pgd-steps", "5",
            "--n-gen", "10", "--gen-steps", "5", "--n-ref", "10", "--ssim-k", "2", "--ssim-n-show", "1",
            "--landscape-images", "2", "--landscape-resolution", "5", "--denoise-steps", "2,4", "--n-ood", "16",
            "--shift-corruptions", "gaussian_noise,contrast", "--probes", "4", "--batch-size", "8", "--out", str(out)]


def test_two_gloo_processes_equal_one_on_every_suite(tmp_path, digits, monkeypatch, one_thread):
    """Every group is sharded: 2 gloo processes give exactly (value, std, n) of one process for
    every metric, FID included (same threads; the second run finds the reference statistics in
    the cache, the first computes them sharded or not: both orders are covered by the suite).
    The one process is this one (``bench.cli.main``, one thread); torchrun's ranks are subprocesses."""
    model = tmp_path / "m.safetensors"
    checkpoints.save(model, trained_model(), META)
    data = tmp_path / "small.npz"  # a small reference set keeps the Inception features cheap
    two_per_class = torch.cat([(digits.train.y == c).nonzero()[:2, 0] for c in range(10)])  # for the Gaussian init
    np.savez(data, x_train=digits.train.x[two_per_class, 0].numpy(), y_train=digits.train.y[two_per_class].numpy(),
             x_test=digits.test.x[:40, 0].numpy(), y_test=digits.test.y[:40].numpy())
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("JEAT_BENCH_CACHE", str(tmp_path / "cache"))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "bench", "run", "--model", str(model)]
    p = subprocess.run([*torchrun, *_settings(data, tmp_path / "two")], env={**os.environ, "OMP_NUM_THREADS": "1"},
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]  # computes the FID reference, sharded
    with threadpool_limits(1, user_api="blas"):  # as the ranks' OMP_NUM_THREADS=1: FID's numpy sums alike
        assert main(["run", "--model", str(model), *_settings(data, tmp_path / "one")]) == 0
    two, one = (json.loads((tmp_path / f"{r}/results.json").read_text()) for r in ("two", "one"))
    assert two["run"]["processes"] == 2 and "processes" not in one["run"]
    assert two["metrics"]["fid"]["details"]["reference_cache"] == "miss"
    assert one["metrics"]["fid"]["details"]["reference_cache"] == "hit"
    assert set(one["metrics"]) == set(two["metrics"]) >= {"accuracy", "pgd20", "ece", "autoattack", "ssim_nn",
                                                          "fid", "jfs", "mfs", "landscape_flatness", "denoise_psnr",
                                                          "shift_acc_mean", "shift_mce", "shift_auroc_energy_s5"}
    for name, a in one["metrics"].items():
        b = two["metrics"][name]
        assert (a["value"], a["std"], a["n"]) == (b["value"], b["std"], b["n"]), name
    # the work was really split: 40 points in batches of 8 (5 batches: 2 and 3 per rank), 12
    # AutoAttack points in 2 blocks, 10 reference and 10 generated images in 2 feature batches each
    assert one["metrics"]["autoattack"]["details"]["blocks"] == "2 pyautoattack calls of up to 8 points"
    sa, sb = np.load(tmp_path / "one/samples/samples.npz"), np.load(tmp_path / "two/samples/samples.npz")
    assert np.array_equal(sa["x"], sb["x"], equal_nan=True) and np.array_equal(sa["y"], sb["y"])
    assert not list(tmp_path.glob("two/**/*rank1*"))  # rank 1 wrote nothing under --out
