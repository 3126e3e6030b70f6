"""Every setting that changes a number, with its default.  results.json records them all
(``run.config``); metric groups declare which of them they depend on (their cache key)."""

from __future__ import annotations

DIGITS_EPS = 0.1  # 8x8 digits take 17 grey levels; 0.1 is 1.6 levels (8/255 would be a third of one)
CIFAR_EPS = 8 / 255
DIGITS_N_AA = 100

DEFAULTS: dict = {
    "seed": 0,
    "batch_size": 250,
    # fast paths of the classifier's forward pass (bench.fastpath; every group's cache key)
    "channels_last": False,
    "amp": "off",  # off, bf16 (autocast for forward passes without gradient only)
    "compile": False,
    "n_eval": None,  # evaluation points: the first n of the test split (None: all)
    # threat model (robust, calibration)
    "norm": "Linf",
    "eps": None,  # None: the checkpoint's training eps, else the data set's default (above)
    "pgd_steps": 20,
    "pgd_step_size": None,  # None: eps / 4
    "pgd_restarts": 1,
    "aa_version": "standard",
    "n_aa": None,  # AutoAttack points (None: n_eval)
    "ece_bins": 20,
    # generation (generative, memorization)
    "n_gen": 500,  # generated images, balanced over classes
    "gen_energy": "joint",  # joint: Eq. 17; ce: Eq. 16
    "gen_init": "gaussian",  # gaussian (class-conditional, Sec. 2.2), uniform, buffer
    "gen_steps": 100,
    "gen_step_size": 2.0,
    "gen_noise": 0.01,  # None: sqrt(step_size) as in Eq. 10
    "gen_clamp": True,
    "inception_weights": None,
    "fid_extractor": "auto",  # auto: torch-fidelity's Inception if its weights are at hand, else fid-helper
    # Fisher scores (score)
    "n_score": 500,
    "probes": 16,
    "exact_trace": False,
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
}


def dataset_defaults(dataset: str) -> dict:
    """Data-set dependent defaults (applied where the user left a setting unset)."""
    if dataset in ("cifar10", "cifar100"):
        return {"eps": CIFAR_EPS, "n_gen": 10000}
    # AutoAttack standard costs about 1.5 s per digits point on one CPU core (mostly Square's 5000
    # queries and the 9 targets of APGD-T and FAB-T): the default takes the first 100 test points
    # (n and the standard error are recorded; --n-aa raises it)
    return {"eps": DIGITS_EPS, "n_aa": DIGITS_N_AA}

# settings that change the generated images: every group that reads them declares these
GEN_SETTINGS = ("seed", "n_gen", "gen_energy", "gen_init", "gen_steps", "gen_step_size", "gen_noise", "gen_clamp")
