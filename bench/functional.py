"""Pure functions on tensors, one or more per metric family: what the metric groups compute, for a
notebook or another library.  Each is a thin, documented wrapper over the engine the groups run
(``bench.engines``, or the numpy maths of ``bench.core``, named in its docstring), never a second
implementation and never a metric module, and its example runs in well under a
second (``tests/test_functional.py`` runs them: ``doctest.testmod(bench.functional)``).

Images are float tensors (N, C, H, W) in [0, 1]; ``model`` is an ``bench.core.energy.EnergyModel``
(or any module mapping such images to logits (N, K)).  Bad input is one ``ValueError`` naming the
problem: non-finite logits, probabilities, scores or features (``non-finite logits (NaN or inf)
in 4 of the 4 rows``; a model's logits on the images too), an empty set, a FID of fewer than two
samples, feature sets of different sizes.  A module passed in training mode is evaluated in eval
mode and given back in its own mode (``bench.core.energy.eval_mode``).
"""

from __future__ import annotations

import torch

from bench.core.energy import EnergyModel, eval_mode
from bench.engines.corruptions import corrupt  # the common corruptions of CIFAR-10-C, as the engine runs them

__all__ = ["corrupt", "energy", "accuracy", "robust_accuracy", "ece", "reliability", "nll", "brier", "fisher_scores",
           "ssim", "ssim_nearest_neighbours", "fid", "kid", "precision_recall", "auroc", "ood_measures", "psnr"]


def _model(model) -> EnergyModel:
    return model if isinstance(model, EnergyModel) else EnergyModel(model)


def _finite(t: torch.Tensor, what: str) -> torch.Tensor:
    """``t`` (rows of logits, probabilities, scores or features), or the one ValueError naming how
    many of its rows hold NaN or inf (the runner's wording for a model's logits)."""
    rows = t.detach().flatten(1) if t.ndim > 1 else t.detach().reshape(-1, 1)
    bad = ~torch.isfinite(rows).all(1)
    if bad.any():
        raise ValueError(f"non-finite {what} (NaN or inf) in {int(bad.sum())} of the {len(bad)} rows")
    return t


def _not_empty(t: torch.Tensor, what: str) -> torch.Tensor:
    if t.numel() == 0:
        raise ValueError(f"{what} of an empty set")
    return t


def _model_logits_finite(m: EnergyModel, x: torch.Tensor) -> None:
    """The model's logits on ``x`` must be finite (one forward pass, no gradient)."""
    with torch.no_grad():
        _finite(m.logits(x), "logits")


def _feature_sets(gen: torch.Tensor, ref: torch.Tensor, least: int) -> None:
    """Two feature sets (N, D) of the same D, each of ``least`` rows or more, finite."""
    if gen.ndim != 2 or ref.ndim != 2:
        raise ValueError(f"features must be (N, D) each, got shapes {tuple(gen.shape)} and {tuple(ref.shape)}")
    if gen.shape[1] != ref.shape[1]:
        raise ValueError(f"the feature sets differ in size: {gen.shape[1]} and {ref.shape[1]} features per sample")
    if min(len(gen), len(ref)) < least:
        raise ValueError(f"needs at least {least} samples in each feature set, got {len(gen)} and {len(ref)}")
    _finite(gen, "features")
    _finite(ref, "features")


def energy(model, x: torch.Tensor, y: torch.Tensor | None = None, kind: str = "joint") -> torch.Tensor:
    """E(x, y) = -f(x)[y] (``joint``), E(x) = -logsumexp_y f(x)[y] (``marginal``) or their
    difference, the cross-entropy (``ce``), per image (``EnergyModel.energy``).

    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1, 2, bias=False))
    >>> _ = net[1].weight.data.copy_(torch.tensor([[1.0], [-1.0]]))
    >>> x = torch.full((1, 1, 1, 1), 0.5)   # logits (0.5, -0.5)
    >>> energy(net, x, torch.tensor([0])).item()
    -0.5
    >>> round(energy(net, x, kind="marginal").item(), 4)   # -log(e^0.5 + e^-0.5) = -log 2.2552
    -0.8133
    """
    return _model(model).energy(x, y, kind)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float, int]:
    """(top-1 accuracy, its standard error sqrt(p(1-p)/n), n) from logits (N, K) (the ``accuracy``
    metric; ``bench.engines.robust_flags.proportion``).

    >>> accuracy(torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1, 1, 1]))
    (0.75, 0.21650635094610965, 4)
    """
    from bench.engines.robust_flags import proportion

    return proportion(_finite(logits, "logits").argmax(1) == y)


def robust_accuracy(model, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "Linf", steps: int = 20,
                    step_size: float | None = None, loss: str = "ce", restarts: int = 1,
                    generator: torch.Generator | None = None) -> tuple[float, float, int]:
    """(robust accuracy, standard error, n) under PGD (``bench.engines.attacks.pgd_restarts``: random start,
    ``steps`` steps of ``step_size`` (eps / 4), on ``loss`` ``ce`` or ``energy``), the ``pgd20``
    metric (``robustness.attack_points``): points misclassified clean count as not robust.

    >>> torch.manual_seed(0) and None
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> x, y = torch.rand(8, 1, 2, 2), torch.randint(0, 2, (8,))
    >>> clean, _, _ = accuracy(net(x), y)
    >>> robust_accuracy(net, x, y, eps=0.0)[0] == clean     # no budget: the clean accuracy
    True
    >>> robust_accuracy(net, x, y, eps=1.0)[0]              # the whole [0, 1] cube: none survives
    0.0
    """
    from bench.engines.robust_flags import attack_points, proportion

    m = _model(model)
    with eval_mode(m):
        _model_logits_finite(m, x)
        _, robust, _ = attack_points(m, x, y, eps, steps, step_size, loss, restarts, generator, norm)
    return proportion(robust)


def ece(probs: torch.Tensor, correct: torch.Tensor, bins: int = 20) -> float:
    """Expected calibration error over ``bins`` equal-width (lo, hi] confidence bins, from class
    probabilities (N, K) or top-class confidences (N,) (``bench.core.binned_calibration.expected_calibration_error``).

    >>> round(ece(torch.tensor([0.9, 0.9, 0.6, 0.6]), torch.tensor([True, True, True, False]), bins=10), 6)
    0.1
    """
    from bench.core.binned_calibration import expected_calibration_error

    return expected_calibration_error(_finite(probs, "probabilities"), correct, bins)[0]


def reliability(probs: torch.Tensor, correct: torch.Tensor, bins: int = 20) -> dict:
    """The reliability diagram's numbers: per bin ``count``, ``accuracy`` and ``confidence`` (None
    when empty), and ``edges`` (``bench.core.binned_calibration.expected_calibration_error``).

    >>> r = reliability(torch.tensor([0.9, 0.9, 0.6, 0.6]), torch.tensor([True, True, True, False]), bins=2)
    >>> r["count"], r["accuracy"], r["edges"]
    ([0, 4], [None, 0.75], [0.0, 0.5, 1.0])
    """
    from bench.core.binned_calibration import expected_calibration_error

    return expected_calibration_error(_finite(probs, "probabilities"), correct, bins)[1]


def nll(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Mean negative log-likelihood -log softmax(f)_y (the ``nll`` metric;
    ``bench.engines.calibration_fit.nll_per_point``).

    >>> round(nll(torch.tensor([[0.0, 0.0]]), torch.tensor([1])), 6)   # log 2
    0.693147
    """
    from bench.engines.calibration_fit import nll_per_point

    return nll_per_point(_not_empty(_finite(logits, "logits"), "nll"), y).mean().item()


def brier(probs: torch.Tensor, y: torch.Tensor) -> float:
    """Mean Brier score sum_k (p_k - [k = y])^2, in [0, 2] (the ``brier`` metric;
    ``bench.engines.calibration_fit.brier_per_point``).

    >>> brier(torch.tensor([[0.5, 0.5], [1.0, 0.0]]), torch.tensor([0, 1]))   # (0.5 + 2) / 2
    1.25
    """
    from bench.engines.calibration_fit import brier_per_point

    return brier_per_point(_not_empty(_finite(probs, "probabilities"), "brier"), y).mean().item()


def fisher_scores(model, x: torch.Tensor, y: torch.Tensor, probes: int = 16, exact: bool = False,
                  generator: torch.Generator | None = None) -> dict[str, float]:
    """Mean Joint and Marginal Fisher scores, 0.5 ||grad_x E||^2 - tr Hess_x E with E(x, y) (``jfs``)
    and E(x) (``mfs``), the trace by Hutchinson with ``probes`` Rademacher probes or ``exact``
    (``bench.engines.fisher_terms.fisher_scores``; pixel space).

    A linear model f(x) = W x has E(x, y) = -w_y . x: no curvature, so JFS = 0.5 ||w_y||^2.

    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, 2, bias=False))
    >>> _ = net[1].weight.data.copy_(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
    >>> s = fisher_scores(net, torch.rand(3, 1, 1, 2), torch.tensor([0, 0, 0]), exact=True)
    >>> round(s["jfs"], 4)
    12.5
    """
    from bench.engines.fisher_terms import fisher_scores as terms_of

    m = _model(model)
    with eval_mode(m):
        _model_logits_finite(m, x)
        t = terms_of(m, x, y, probes=probes, exact=exact, generator=generator)
    return {"jfs": t["joint"]["score"].double().mean().item(), "mfs": t["marginal"]["score"].double().mean().item()}


def ssim(a: torch.Tensor, b: torch.Tensor, win_size: int = 7, data_range: float = 1.0) -> torch.Tensor:
    """SSIM of each pair (a[i], b[i]) as scikit-image computes it (7x7 uniform window), (N,)
    (``bench.engines.ssim.ssim``).

    >>> x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    >>> ssim(x, x).tolist()
    [1.0, 1.0]
    """
    from bench.engines.ssim import ssim as ssim_of

    return ssim_of(a, b, win_size, data_range)


def ssim_nearest_neighbours(gen: torch.Tensor, train: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` training images of highest SSIM to each generated image: (SSIM (G, k), training
    indices (G, k)), best first (the ``ssim_nn`` metric; ``bench.engines.ssim.nearest_neighbours``).

    >>> train = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    >>> values, index = ssim_nearest_neighbours(train[[3, 1]], train)
    >>> index.flatten().tolist(), values.flatten().tolist()
    ([3, 1], [1.0, 1.0])
    """
    from bench.engines.ssim import nearest_neighbours

    return nearest_neighbours(gen, train, k)


def fid(gen_features: torch.Tensor, ref_features: torch.Tensor) -> float:
    """Frechet distance ||mu_g - mu_r||^2 + tr(S_g + S_r - 2 (S_g S_r)^(1/2)) of two feature sets
    (N, D), as the ``fid`` metric takes it (``bench.engines.sample_quality.frechet_distance``).

    >>> g = torch.Generator().manual_seed(0)
    >>> a = torch.randn(200, 3, generator=g)
    >>> round(fid(a, a), 6)
    0.0
    >>> round(fid(a + 2.0, a), 4)       # a shift by 2 in 3 dimensions: 3 * 2^2
    12.0
    """
    from bench.engines.refstats import statistics
    from bench.engines.sample_quality import frechet_distance

    _feature_sets(gen_features, ref_features, 2)  # a covariance needs two samples
    return frechet_distance(gen_features, statistics(ref_features))


def kid(gen_features: torch.Tensor, ref_features: torch.Tensor) -> tuple[float | None, float | None]:
    """(KID mean, std over subsets): unbiased MMD^2 with the cubic polynomial kernel, torch-fidelity's,
    as ``kid_mean``/``kid_std`` (``bench.engines.sample_quality.kid_prc``).

    >>> g = torch.Generator().manual_seed(0)
    >>> mean, std = kid(torch.randn(20, 4, generator=g) + 3.0, torch.randn(20, 4, generator=g))
    >>> mean > 1.0
    True
    """
    from bench.engines.sample_quality import kid_prc

    _feature_sets(gen_features, ref_features, 1)
    k = kid_prc(gen_features, ref_features)
    return k["kid_mean"], k["kid_std"]


def precision_recall(gen_features: torch.Tensor, ref_features: torch.Tensor) -> tuple[float | None, float | None]:
    """Improved precision and recall (Kynkaanniemi et al., k = 3; torch-fidelity's), the
    ``precision``/``recall`` metrics (``bench.engines.sample_quality.kid_prc``).

    >>> a = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    >>> precision_recall(a, a)
    (1.0, 1.0)
    """
    from bench.engines.sample_quality import kid_prc

    _feature_sets(gen_features, ref_features, 1)
    k = kid_prc(gen_features, ref_features)
    return k["precision"], k["recall"]


def auroc(scores_in: torch.Tensor, scores_out: torch.Tensor) -> tuple[float, float | None]:
    """(AUROC, DeLong standard error) of in-distribution scores (positive) against OOD scores; ties
    count 1/2 (the ``ood_auroc_*`` metrics; ``bench.core.roc.auroc``).

    >>> auroc(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([0.0, 1.0]))[0]   # 5.5 of 6 pairs
    0.9166666666666666
    """
    from bench.core.roc import auroc as auroc_of

    return auroc_of(_finite(scores_in, "scores"), _finite(scores_out, "scores"))


def ood_measures(scores_in: torch.Tensor, scores_out: torch.Tensor) -> dict[str, tuple[float, float | None]]:
    """{auroc, aupr_in, aupr_out, fpr95: (value, std)} (``bench.engines.ood_scores.ood_measures``).

    >>> m = ood_measures(torch.tensor([3.0, 2.0]), torch.tensor([0.0, 1.0]))
    >>> m["auroc"][0], m["fpr95"][0]
    (1.0, 0.0)
    """
    from bench.engines.ood_scores import ood_measures as measures

    return measures(_finite(scores_in, "scores"), _finite(scores_out, "scores"))


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR 10 log10(range^2 / MSE) in dB (the ``denoise_psnr`` metrics; ``bench.engines.denoising.psnr``).

    >>> round(psnr(torch.full((1, 1, 2, 2), 0.1), torch.zeros(1, 1, 2, 2)).item(), 5)   # MSE 0.01
    20.0
    """
    from bench.engines.denoising import psnr as psnr_of

    return psnr_of(x, ref, data_range)
