"""Every setting that changes a number, declared once (``SETTINGS``): name, kind, default, what a
derived default comes from, help text and, for a closed vocabulary, its enum (each a ``Setting``,
``bench.core.setting_kinds``).  ``bench run``'s
options, ``validate``, ``complete`` (derived defaults) and ``DEFAULTS`` come from that table.
results.json records every setting (``run.config``); metric groups declare which of them they
depend on (their cache key)."""

from __future__ import annotations

import math

from bench.core.compat import StrEnum
from bench.core.setting_kinds import KINDS, SIGNS, Setting  # noqa: F401  (re-exported)

DIGITS_EPS = 0.1  # 8x8 digits take 17 grey levels; 0.1 is 1.6 levels (8/255 would be a third of one)
CIFAR_EPS = 8 / 255
FMNIST_EPS = 0.1  # the usual L-inf radius for (Fashion-)MNIST robustness (25.5 of 255 grey levels)
FMNIST_N_EVAL = 1000  # CPU-sized default: the first 1,000 of the 10,000 test points (--n-eval raises it)
FMNIST_N_AA = 200  # AutoAttack's share of those (see _dataset_defaults; --n-aa raises it)
# FID/KID/precision-recall reference: the first 2,000 of the 60,000 training images (194-216 per class).
# The Inception network costs about 0.28 s of one CPU core per image, so the whole split would take
# about 4.6 hours once; 2,000 take about 9 minutes (shipped in models/refstats/, so a run reads them).
FMNIST_N_REF = 2000
FMNIST_N_JUDGE_REF = 10000  # the judge's reference (a WRN-10-1 pass, about a millisecond per image on a CPU core)
DIGITS_N_AA = 100
# L2 radii (--norm L2), in [0, 1] pixel units like the L-inf ones.  CIFAR: 0.5, the RobustBench
# standard.  Fashion-MNIST: 1.5, common for 28x28 (MNIST) images.  Digits (8x8, 64 pixels): 0.5,
# about half the L2 length of the L-inf 0.1 ball's corner (0.1 * sqrt(64) = 0.8), the same share
# as Fashion-MNIST's 1.5 of its L-inf 0.1 corner (0.1 * 28 = 2.8); it moves one pixel by half its
# range or all 64 by 0.0625 (one grey level of the 17).
L2_EPS = {"cifar10": 0.5, "cifar100": 0.5, "cifar10-c": 0.5, "cifar100-c": 0.5, "fashion-mnist": 1.5, "digits": 0.5}


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

from bench.core.choices import (  # noqa: E402,F401  (the closed vocabularies, re-exported)
    AAVersion,
    Amp,
    DefenseKind,
    DenoiseLabel,
    FisherSpace,
    GenEnergy,
    GenInit,
    Norm,
    OodScore,
)


def _step(s: dict, linf_eps: float) -> float:
    return s["eps"] / 4


def _radius(s: dict, linf_eps: float) -> float:
    return 2 * linf_eps  # L-inf sized even under --norm L2: the landscape is drawn in a square


_EPS_HELP = ("attack radius in [0,1] pixel units (default: the checkpoint's; L-inf 8/255 for CIFAR, 0.1 for digits "
             "and Fashion-MNIST; L2 0.5 for CIFAR and digits, 1.5 for Fashion-MNIST)")

SETTINGS: tuple[Setting, ...] = (
    Setting("seed", "int", 0, "seed of every random stream (each group draws from its own)",
            bounds=(0, 2**63)),  # what torch.manual_seed takes without overflow, with room for derived seeds
    Setting("batch_size", "count", 250, "points per batch"),
    Setting("normalize", "text", None,
            "input normalisation of a foreign model: cifar10, cifar100, imagenet, none (0/1), half (0.5/0.5), "
            "or MEANS/STDS e.g. 0.4914,0.4822,0.4465/0.2470,0.2435,0.2616 (default: the checkpoint's; JEM's "
            "0.5/0.5; else mean 0, std 1 with a warning for plain state dicts); keys every group through the "
            "weights digest"),
    # fast paths of the classifier's forward pass (bench.runtime.fastpath; every group's cache key)
    Setting("channels_last", "bool", False, "fast path: channels-last memory format"),
    Setting("amp", "choice", Amp.OFF, "fast path: bf16 autocast for forward passes without gradient (never "
            "attack gradients)", Amp),
    Setting("compile", "bool", False, "fast path: torch.compile the network"),
    Setting("n_eval", "count", None, "evaluation points: the first n of the test split (default all; 1000 "
            "for Fashion-MNIST)"),
    # threat model (robust, calibration, ood)
    Setting("norm", "choice", Norm.LINF, "threat model of PGD, FGSM (FGM under L2) and AutoAttack", Norm),
    Setting("eps", "number", None, _EPS_HELP, sign="non-negative"),
    Setting("pgd_steps", "count", 20, "PGD steps"),
    Setting("pgd_step_size", "number", None, "PGD step", derived_from="eps / 4", derive=_step, sign="positive"),
    Setting("pgd_restarts", "count", 1, "PGD restarts (a point counts as robust if it survives all)"),
    Setting("aa_version", "choice", AAVersion.STANDARD, "AutoAttack version", AAVersion),
    Setting("n_aa", "count", None, "AutoAttack points, the first of the evaluation points (default: n-eval; "
            "100 for digits, 200 for Fashion-MNIST)", derived_from="n_eval"),
    Setting("eps_grid", "numbers", None,
            "robustness curve: the attack radii, a comma list in --eps's units (e.g. 0,0.05,0.1 or 2/255,4/255); every "
            "attack of --curve-attacks runs at each (eps 0, clean accuracy, always included); --eps stays the single "
            "threat model of the other metrics and Tables 1-3 (default: no curve)", sign="non-negative"),
    Setting("curve_attacks", "text", None,
            "attacks of the robustness curve, comma list of registered ones (bench.metrics.curves: pgd20, "
            "pgd20_energy, autoattack, ...) (default: every registered attack that supports --norm)"),
    # defended inference and adaptive attacks (bench.engines.defense, bench.metrics.adaptive; README, "Evaluating a
    # stochastic or refined defence")
    Setting("defense", "choice", DefenseKind.NONE, "defended inference of the robust, calibration and OOD groups: "
            "none, or sgld-refine (K SGLD steps on E(x) before classifying, logits averaged over chains)",
            DefenseKind),
    Setting("refine_steps", "count", 10, "sgld-refine: SGLD steps K"),
    Setting("refine_chains", "count", 1, "sgld-refine: chains C (logits averaged)"),
    Setting("refine_step_size", "number", JEM_SGLD_STEP_SIZE, "sgld-refine: SGLD step in [0,1] pixel space "
            "(docs/CONVENTIONS.md; JEM's sgld_lr 1 -> 0.5)", sign="positive"),
    Setting("refine_noise", "number", JEM_SGLD_NOISE, "sgld-refine: SGLD noise in pixels (JEM's 0.01 -> 0.005)", sign="non-negative"),
    Setting("eot", "count", None, "EOT-PGD / BPDA+EOT gradient draws per step (default 8 where the adaptive "
            "attacks run; setting it runs them on an undefended, e.g. stochastic, model too)"),
    Setting("defense_repeats", "count", 5, "adaptive attacks: fresh draws of the defence a point must survive "
            "(all of them) to count as robust"),
    Setting("sanity_checks", "bool", False, "extra passes for the sanity flags: PGD with 2x steps and 2 "
            "restarts, and PGD at a large eps (bench.runtime.sanity)"),
    Setting("ece_bins", "count", 20, "bins of ece and mce (equal-width) and of ece_adaptive (equal-mass)"),
    # OOD detection (ood; bench.inputs.ood_data, bench.metrics.ood)
    Setting("ood", "text", "uniform,interp",
            "OOD sets for --suite ood, comma list: uniform, gaussian, constant, inverted, vflip, interp, digits, "
            "fashion-mnist, cifar10, cifar100, svhn, npz:PATH, folder:PATH (far: uniform noise; near: mixtures "
            "of two test images)"),
    Setting("n_ood", "count", None, "points per OOD set (default: n-eval)", derived_from="n_eval"),
    Setting("ood_scores", "choices", "px,py,pxgrad", "OOD scores, comma list of px, py, pxgrad", OodScore),
    # distribution shift (shift; bench.metrics.shift, docs/CORRUPTIONS.md "The shift suite")
    Setting("shift_corruptions", "text", None, "corruptions of --suite shift, comma list of the CIFAR-10-C names "
            "(default: all those defined at the data's image size; glass_blur needs a side of 16 px or more)",
            derived_from="the data's image size"),
    Setting("shift_reference", "text", None, "an earlier run's folder whose accuracy and shift_acc_* (same data, "
            "n-eval, seed) are the reference of shift_ce_*, shift_mce, shift_rmce (default: for a released "
            "checkpoint, the released normal model of its data set and activation; otherwise none)"),
    # generation (generative, memorization)
    Setting("n_gen", "count", 500, "generated images, balanced over classes"),
    Setting("gen_energy", "choice", GenEnergy.JOINT, "joint: Eq. 17; ce: Eq. 16", GenEnergy),
    Setting("gen_init", "choice", GenInit.GAUSSIAN, "SGLD start: class-conditional Gaussian (Sec. 2.2), "
            "uniform, or the checkpoint's replay buffer", GenInit),
    Setting("gen_steps", "count", 100, "SGLD steps"),
    Setting("gen_step_size", "number", JEM_SGLD_STEP_SIZE,
            "SGLD step in [0,1] pixel space (docs/CONVENTIONS.md): JEM's sgld_lr 1 on (x-0.5)/0.5 -> 0.5", sign="positive"),
    Setting("gen_noise", "number", JEM_SGLD_NOISE,
            "SGLD noise in pixels: JEM's sgld_std 0.01 -> 0.005 (unset in a py: call: sqrt(step), Eq. 10)", sign="non-negative"),
    Setting("gen_clamp", "bool", True, "clamp SGLD iterates to [0, 1]"),
    Setting("inception_weights", "file", None, "torch-fidelity's weights-inception-2015-12-05-6726825d.pth "
            "(enables Inception Score offline)"),
    Setting("fid_extractor", "text", "auto", "auto (torch-fidelity's Inception if its weights are at hand, "
            "else fid-helper), inception, fid-helper, or an offline encoder with --extractor-weights: "
            "dinov2-vit-s14 (-b14, -l14), clip-vit-b32 (-b16, -l14), vgg16 (FID/KID/PR in its features)"),
    Setting("extractor_weights", "file", None, "weights file of the --fid-extractor encoder (dinov2_vits14_pretrain.pth, "
            "ViT-B-32.pt, vgg16-397923af.pth; loaded strictly, never downloaded)"),
    Setting("ref_stats", "file", None, "FID/KID/PR reference statistics file (bench ref-stats) instead of the "
            "training split's"),
    Setting("n_ref", "count", None, "FID/KID/precision-recall reference: the first N training images (default: "
            "all; 2000 for Fashion-MNIST)"),
    Setting("max_diverged", "fraction", 0.1, "IS/FID are null above this fraction of diverged SGLD chains"),
    # in-domain judge of the generated images (generative; bench.engines.judges, docs/JUDGES.md)
    Setting("judge", "file", None, "in-domain judge checkpoint for is_judge, fd_judge, kid_judge, class_agreement, "
            "density, coverage (default: the shipped models/judges/<dataset>-judge.safetensors)"),
    Setting("judge_arch", "text", None, "architecture of a --judge plain state dict (as --arch)"),
    Setting("n_judge_ref", "count", None, "judge reference: the first N training images (default: all; 10000 for "
            "Fashion-MNIST)"),
    # Fisher scores (score)
    Setting("n_score", "count", 500, "points of the Fisher scores"),
    Setting("probes", "count", 16, "Hutchinson probes per point"),
    Setting("exact_trace", "bool", False, "exact Hessian trace instead of Hutchinson's (small inputs)"),
    Setting("fisher_space", "choice", FisherSpace.PIXEL, "JFS/MFS derivatives w.r.t. the [0,1] image (pixel) or "
            "the network's normalised input (model: the paper's convention; differs by 1/s^2)", FisherSpace),
    # memorization
    Setting("ssim_k", "count", 10, "nearest training images kept per generated image"),
    Setting("ssim_n_show", "count", 8, "generated images shown with their neighbours"),
    # landscape
    Setting("landscape_images", "count", 4, "images whose energy landscape is drawn"),
    Setting("landscape_radius", "number", None, "half-width of the landscape's square",
            derived_from="2 * the L-inf eps", derive=_radius, sign="positive"),
    Setting("landscape_resolution", "count", 41, "grid points per side of the landscape"),
    # denoise (App. G.1)
    Setting("denoise_images", "count", 200, "noisy test images denoised"),
    Setting("denoise_var", "number", 0.3, "variance of the added Gaussian noise", sign="positive"),
    Setting("denoise_steps", "counts", [10, 50], "Langevin step counts reported"),
    Setting("denoise_step_size", "number", 0.02, "Langevin step", sign="positive"),
    Setting("denoise_noise", "number", 0.0, "Langevin noise", sign="non-negative"),
    Setting("denoise_label", "choice", DenoiseLabel.PREDICTED, "label of the denoising energy E(x, y): the "
            "model's prediction on the noisy image or the true label (oracle)", DenoiseLabel),
)

SPECS: dict[str, Setting] = {st.name: st for st in SETTINGS}
# every setting that changes a number, with its default: results.json records them all (run.config)
DEFAULTS: dict = {st.name: (list(st.default) if isinstance(st.default, list)
                             else st.default.value if isinstance(st.default, StrEnum) else st.default)
                   for st in SETTINGS}


def validate(s: dict, input_shape=None) -> None:
    """Every value against its declaration, then the checks that involve two settings or the data
    (the eps ball); the first problem is a BenchError of one line."""
    from bench.core.errors import BenchError

    unknown = set(s) - set(SPECS)
    if unknown:
        raise BenchError(f"unknown setting {sorted(unknown)[0]!r}")
    for name, v in s.items():
        why = SPECS[name].check(v)
        if why:
            raise BenchError(why)
    for what, eps in [("eps", s.get("eps"))] + [("eps-grid value", e) for e in s.get("eps_grid") or ()]:
        if eps is not None:
            _check_eps(what, eps, s.get("norm", Norm.LINF), input_shape)


def _check_eps(what: str, eps: float, norm: str, input_shape) -> None:
    """One attack radius (``--eps`` or a value of ``--eps-grid``) inside its norm's range."""
    from bench.core.errors import BenchError

    if eps < 0:
        raise BenchError(f"{what} must be a non-negative number, got {eps}")
    if norm == Norm.LINF and eps >= 1:
        raise BenchError(f"{what} {eps:g} is outside [0, 1): inputs live in [0, 1], so give e.g. 8/255, not 8")
    if norm == Norm.L2 and input_shape is not None and eps > math.sqrt(math.prod(input_shape)):
        d = math.prod(input_shape)
        raise BenchError(f"L2 {what} {eps:g} exceeds sqrt({d}) = {math.sqrt(d):.4g}, the diameter of [0, 1]^{d} "
                         f"for {'x'.join(map(str, input_shape))} images: such a ball holds every image")


def complete(s: dict, linf_eps: float | None = None) -> dict:
    """``s`` with every derived setting left None filled from the others (``Setting.derive``);
    ``linf_eps``: the run's L-inf radius (the eps itself under L-inf)."""
    out = dict(s)
    base = out["eps"] if linf_eps is None else linf_eps
    for st in SETTINGS:
        if st.derive is not None and out.get(st.name) is None and out.get("eps") is not None:
            out[st.name] = st.derive(out, base)
    return out


def at_radius(s: dict, eps: float) -> dict:
    """The settings ``s`` (a run's, complete) of an attack at radius ``eps`` instead of ``s["eps"]``:
    ``eps`` set, and every setting that holds its derivation (``derive``; left None, or equal to what
    ``complete`` gives at the run's eps) derived again by ``complete`` from ``eps``
    (``pgd_step_size``: eps / 4); a value the user set to something else is kept at every radius.
    Under L2 the landscape's radius, derived from the L-inf eps, is not the attack's: it is kept."""
    linf = s.get("norm", Norm.LINF) == Norm.LINF
    out = dict(s, eps=eps)
    for st in SETTINGS:
        if st.derive is None or (st.derive is _radius and not linf):
            continue
        if s.get(st.name) is None or (s.get("eps") is not None and s[st.name] == st.derive(s, s["eps"])):
            out[st.name] = None
    return complete(out)


def value(s: dict, name: str):
    """One setting of ``s``, derived when it was left None (groups called outside a run)."""
    return complete(s)[name] if s.get(name) is None else s[name]


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
    from bench.core.errors import BenchError

    why = SPECS["n_ref"].check(n_ref)
    if why:
        raise BenchError(why)
    return n_ref if n_ref is not None else _dataset_defaults(dataset).get("n_ref")


def _dataset_defaults(dataset: str) -> dict:
    if dataset in ("cifar10", "cifar100", "cifar10-c", "cifar100-c"):
        return {"eps": CIFAR_EPS, "n_gen": 10000}
    if dataset == "fashion-mnist":
        return {"eps": FMNIST_EPS, "n_eval": FMNIST_N_EVAL, "n_aa": FMNIST_N_AA, "n_ref": FMNIST_N_REF,
                "n_judge_ref": FMNIST_N_JUDGE_REF}
    # AutoAttack standard costs about 0.6 s of one CPU core per robust digits point, all of it the
    # network's own forward and backward passes (Square's 5000 queries about half, FAB-T's and
    # APGD-T's 9 targets x 100 steps the rest; 450 points would take about 4 minutes): the default takes
    # the first 100 test points, and its group reports clean and PGD-20 accuracy on those same
    # points (accuracy_aa, pgd20_aa); --n-aa raises it
    return {"eps": DIGITS_EPS, "n_aa": DIGITS_N_AA}

# settings that change the generated images: every group that reads them declares these
GEN_SETTINGS = ("seed", "n_gen", "gen_energy", "gen_init", "gen_steps", "gen_step_size", "gen_noise", "gen_clamp")
# the settings of the defended model (bench.engines.defense): every group computed through it declares them
DEFENSE_SETTINGS = ("defense", "refine_steps", "refine_chains", "refine_step_size", "refine_noise")
# the fast paths (bench.runtime.fastpath): they key every group, since they may move any number
FASTPATH_SETTINGS = ("channels_last", "amp", "compile")
AMP_CHOICES = tuple(a.value for a in Amp)
