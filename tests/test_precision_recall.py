"""Precision/recall on the run's device (``bench.engines.precision_recall``) against torch-fidelity's
``prc_features_to_metric``: equal, in blocks smaller than the sets and larger."""

import pytest
import torch
from torch_fidelity.metric_prc import prc_features_to_metric

from bench.engines.precision_recall import precision_recall

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("block", [7, 25, 1000])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_equal_to_torch_fidelity(device, block, k):
    g = torch.Generator().manual_seed(k)
    gen, real = torch.randn(83, 10, generator=g) + 0.4, 1.3 * torch.randn(61, 10, generator=g)
    gen[:5] = real[:5]  # points shared by both sets: distance 0, on every ball's edge
    for save_cpu_ram in (True, False):  # its blockwise and its in-memory form
        want = prc_features_to_metric(gen, real, prc_neighborhood=k, prc_batch_size=block, save_cpu_ram=save_cpu_ram,
                                      verbose=False)
        got = precision_recall(gen.to(device), real.to(device), k, block)
        assert got == (want["precision"], want["recall"])
    assert 0 < got[0] < 1 and 0 < got[1] < 1


def test_by_hand_and_refused_below_k():
    """Two points at 0 and 1, real points at 0, 0.5, 3 (1-D), k = 1: radii gen (1, 1), real
    (0.5, 0.5, 2.5); precision: 0 in a real ball, 1 in 0.5's ball (|1 - 0.5| <= 0.5): 2/2;
    recall: 0 and 0.5 within 1 of a generated point, 3 is not: 2/3."""
    gen, real = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [0.5], [3.0]])
    assert precision_recall(gen, real, 1, 2) == (1.0, pytest.approx(2 / 3))
    with pytest.raises(ValueError, match="more than 3"):
        precision_recall(gen, real, 3, 10)
