"""Every setting that changes a number, with its default.  results.json records them all
(``run.config``); metric groups declare which of them they depend on (their cache key)."""

from __future__ import annotations

DIGITS_EPS = 0.1  # 8x8 digits take 17 grey levels; 0.1 is 1.6 levels (8/255 would be a third of one)
CIFAR_EPS = 8 / 255
FMNIST_EPS = 0.1  # the usual L-inf radius for (Fashion-)MNIST robustness (25.5 of 255 grey levels)
FMNIST_N_EVAL = 1000  # CPU-sized default: the first 1,000 of the 10,000 test points (--n-eval raises it)
FMNIST_N_AA = 200  # AutoAttack's share of those (see _dataset_defaults; --n-aa raises it)
# FID/KID/precision-recall reference: the first 2,000 of the 60,000 training images (194-216 per class).
# The Inception network costs about 0.28 s of one CPU core per image, so the whole split would take
# about 4.6 hours once; 2,000 take about 9 minutes (shipped in models/refstats/, so a run reads them).
FMNIST_N_REF = 2000
DIGITS_N_AA = 100
# L2 radii (--norm L2), in [0, 1] pixel units like the L-inf ones.  CIFAR: 0.5, the RobustBench
# standard.  Fashion-MNIST: 1.5, common for 28x28 (MNIST) images.  Digits (8x8, 64 pixels): 0.5,
# about half the L2 length of the L-inf 0.1 ball's corner (0.1 * sqrt(64) = 0.8), the same share
# as Fashion-MNIST's 1.5 of its L-inf 0.1 corner (0.1 * 28 = 2.8); it moves one pixel by half its
# range or all 64 by 0.0625 (one grey level of the 17).
NORMS = ("Linf", "L2")
L2_EPS = {"cifar10": 0.5, "cifar100": 0.5, "fashion-mnist": 1.5, "digits": 0.5}


def sgld_from_normalised(lr: float, std: float, scale: float) -> tuple[float, float]:
    """(step_size, noise) in [0, 1] pixel space of an SGLD chain quoted in a model's normalised
    input space z = (x - m) / s (docs/CONVENTIONS.md, "SGLD"): JEM's ``sample_q`` updates
    z += lr * grad_z f + std * N(0, I), and with grad_z = s * grad_x that is, in pixels,
    x += lr * s^2 * grad_x f + s * std * N(0, I), i.e. our x -= (step_size / 2) grad_x E + noise N
    with step_size = 2 lr s^2 and noise = s * std.  The one place such numbers are converted."""
    return 2.0 * lr * scale**2, std * scale


# JEM's sgld_lr = 1, sgld_std = 0.01 on (x - 0.5) / 0.5 (the JEM/JEAT papers' setting): step 0.5,
# noise 0.005 in pixels.  Recipes, generation defaults and SGLDConfig all take these.
JEM_SGLD_STEP_SIZE, JEM_SGLD_NOISE = sgld_from_normalised(1.0, 0.01, 0.5)

DEFAULTS: dict = {
    "seed": 0,
    "batch_size": 250,
    # the model's input normalisation for foreign models (--normalize: a preset or M1,M2,M3/S1,S2,S3;
    # None: the checkpoint's, JEM's, or mean 0 / std 1); keys every group through the weights digest
    "normalize": None,
    # fast paths of the classifier's forward pass (bench.fastpath; every group's cache key)
    "channels_last": False,
    "amp": "off",  # off, bf16 (autocast for forward passes without gradient only)
    "compile": False,
    "n_eval": None,  # evaluation points: the first n of the test split (None: all)
    # threat model (robust, calibration): norm Linf or L2 (--norm; keys every attack's group)
    "norm": "Linf",
    "eps": None,  # None: the checkpoint's training eps (same norm), else the data set's default (above)
    "pgd_steps": 20,
    "pgd_step_size": None,  # None: eps / 4
    "pgd_restarts": 1,
    "aa_version": "standard",
    "n_aa": None,  # AutoAttack points (None: n_eval)
    "ece_bins": 20,  # also the bins of mce and ece_adaptive (equal-mass)
    # OOD detection (ood; bench.ood_data, bench.metrics.ood)
    "ood": "uniform,interp",  # OOD sets: far (uniform noise) and near (mixtures of two test images)
    "n_ood": None,  # points per OOD set (None: n_eval)
    "ood_scores": "px,py,pxgrad",
    # generation (generative, memorization)
    "n_gen": 500,  # generated images, balanced over classes
    "gen_energy": "joint",  # joint: Eq. 17; ce: Eq. 16
    "gen_init": "gaussian",  # gaussian (class-conditional, Sec. 2.2), uniform, buffer
    "gen_steps": 100,
    "gen_step_size": JEM_SGLD_STEP_SIZE,  # pixel space (docs/CONVENTIONS.md): JEM's sgld_lr 1 -> 0.5
    "gen_noise": JEM_SGLD_NOISE,  # JEM's sgld_std 0.01 -> 0.005; None: sqrt(step_size) as in Eq. 10
    "gen_clamp": True,
    "inception_weights": None,
    "fid_extractor": "auto",  # auto: torch-fidelity's Inception if its weights are at hand, else fid-helper
    "ref_stats": None,  # a reference statistics file (bench ref-stats) instead of the training split's
    "n_ref": None,  # FID/KID/precision-recall reference: the first n_ref training images (None: all)
    "max_diverged": 0.1,  # IS/FID are null when more than this fraction of the SGLD chains diverged
    # Fisher scores (score)
    "n_score": 500,
    "probes": 16,
    "exact_trace": False,
    "fisher_space": "pixel",  # pixel: derivatives w.r.t. x in [0, 1]; model: w.r.t. the net's input (x - m) / s
    # memorization
    "ssim_k": 10,
    "ssim_n_show": 8,
    # landscape
    "landscape_images": 4,
    "landscape_radius": None,  # None: 2 * eps
    "landscape_resolution": 41,
    # denoise (App. G.1)
    "denoise_images": 200,
    "denoise_var": 0.3,
    "denoise_steps": [10, 50],
    "denoise_step_size": 0.02,
    "denoise_noise": 0.0,
    "denoise_label": "predicted",  # predicted: argmax of the model on the noisy image; oracle: the true label
}


def dataset_defaults(dataset: str, norm: str = "Linf") -> dict:
    """Data-set dependent defaults (applied where the user left a setting unset); the eps default
    depends on the norm (L2: ``L2_EPS``, 0.5 for a data set not listed there)."""
    out = _dataset_defaults(dataset)
    if norm == "L2":
        out["eps"] = L2_EPS.get(dataset, 0.5)
    return out


def reference_size(dataset: str, n_ref: int | None) -> int | None:
    """The FID/KID/precision-recall reference size: ``n_ref`` if given, else the data set's
    default (None: the whole training split); a non-positive size is an error."""
    from bench.errors import BenchError

    if n_ref is not None and (not isinstance(n_ref, int) or n_ref <= 0):
        raise BenchError(f"n-ref must be a positive integer, got {n_ref}")
    return n_ref if n_ref is not None else _dataset_defaults(dataset).get("n_ref")


def _dataset_defaults(dataset: str) -> dict:
    if dataset in ("cifar10", "cifar100"):
        return {"eps": CIFAR_EPS, "n_gen": 10000}
    if dataset == "fashion-mnist":
        return {"eps": FMNIST_EPS, "n_eval": FMNIST_N_EVAL, "n_aa": FMNIST_N_AA, "n_ref": FMNIST_N_REF}
    # AutoAttack standard costs about 0.6 s of one CPU core per robust digits point, all of it the
    # network's own forward and backward passes (Square's 5000 queries about half, FAB-T's and
    # APGD-T's 9 targets x 100 steps the rest; 450 points would take about 4 minutes): the default takes
    # the first 100 test points, and its group reports clean and PGD-20 accuracy on those same
    # points (accuracy_aa, pgd20_aa); --n-aa raises it
    return {"eps": DIGITS_EPS, "n_aa": DIGITS_N_AA}

# settings that change the generated images: every group that reads them declares these
GEN_SETTINGS = ("seed", "n_gen", "gen_energy", "gen_init", "gen_steps", "gen_step_size", "gen_noise", "gen_clamp")
