"""bench.functional: every public function documented with an example, and the examples pass."""

import doctest

import bench.functional as F


def test_the_examples_run_and_pass(one_thread):
    result = doctest.testmod(F, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted >= 2 * len(F.__all__)


def test_every_function_has_an_example():
    missing = [n for n in F.__all__ if ">>>" not in (getattr(F, n).__doc__ or "")]
    assert not missing


def test_auroc_fid_and_brier_against_independent_references():
    import numpy as np
    import torch
    from scipy import linalg
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(1)
    s_in, s_out = torch.randn(40, generator=g) + 1.0, torch.randn(30, generator=g)
    expected = roc_auc_score(np.r_[np.ones(40), np.zeros(30)], np.r_[s_in.numpy(), s_out.numpy()])
    assert abs(F.auroc(s_in, s_out)[0] - expected) < 1e-12
    a, b = torch.randn(300, 3, generator=g), 0.5 * torch.randn(300, 3, generator=g) + 1.0
    mu_a, mu_b = a.double().mean(0).numpy(), b.double().mean(0).numpy()
    sa, sb = np.cov(a.double().numpy(), rowvar=False), np.cov(b.double().numpy(), rowvar=False)
    ref = ((mu_a - mu_b) ** 2).sum() + np.trace(sa + sb - 2 * linalg.sqrtm(sa @ sb).real)
    assert abs(F.fid(a, b) - ref) < 1e-4 * ref
    p = torch.softmax(torch.randn(5, 3, generator=g), 1)
    y = torch.tensor([0, 1, 2, 1, 0])
    by_hand = sum(sum((p[i, k].item() - float(k == int(y[i]))) ** 2 for k in range(3)) for i in range(5)) / 5
    assert abs(F.brier(p, y) - by_hand) < 1e-12
