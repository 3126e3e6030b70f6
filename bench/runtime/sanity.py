"""Run-time sanity checks and the sanity flags of an evaluation, in one place.

Checks (they stop a number): the model's determinism check before the groups (``check_model``:
two forward passes of the same few test images, compared exactly; ``run.model_checks``), and the
threat-model ball every adversarial example must lie in (``check_in_ball``, one tolerance for every
caller).

Flags (they warn about a number, after AutoAttack's ``checks`` and Carlini et al. 2019, "On
evaluating adversarial robustness"): each is a dict ``{"flag", "message", ...evidence}`` recorded
in the metric's ``details["flags"]``, gathered into ``run.flags`` of results.json, shown in the
tables and the report, and printed as one console line each (``bench.pipeline.runner``).

=========================  ==============================================================  ==========
flag                       raised when                                                     cost
=========================  ==============================================================  ==========
``randomness_without_eot`` two forward passes of the same ``N_IMAGES`` points differ and   2 forward
                           the attack averaged no gradient draws (``eot`` unset or 1)       passes
``masked_gradients``       the input gradient of the cross-entropy is all zero or          1 backward
                           non-finite on more than ``MASKED_SHARE`` of the points          pass
``more_steps_stronger``    PGD with twice the steps and two restarts leaves more than      opt-in:
                           ``RISE_SHARE`` of the points more robust than PGD               ``--sanity-checks``
``large_eps_not_zero``     PGD at a large eps (L-inf 0.5, L2 half the diameter of          opt-in:
                           [0, 1]^d) leaves more than ``LARGE_EPS_SHARE`` robust            ``--sanity-checks``
``black_box_stronger``     pyautoattack reports that Square (black-box) lowered robust     none (its
                           accuracy below the white-box attacks                            own check)
=========================  ==============================================================  ==========
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

N_IMAGES = 8  # the first test images, passed twice
MASKED_SHARE = 0.1  # a share of points with a zero or non-finite input gradient
RISE_SHARE = 0.01  # robust accuracy rising by more than 1 % of the points with a stronger attack
LARGE_EPS_SHARE = 0.02  # robust accuracy above 2 % at a large eps
LARGE_LINF_EPS = 0.5
# the one tolerance of the threat-model check: relative (a float32 norm carries rounding of about
# 1e-7 of its size) plus absolute, and of the [0, 1] range
BALL_REL, BALL_ABS, RANGE_TOL = 1e-5, 1e-6, 1e-6
NORMS = ("Linf", "L2", "L1")

WARNING = ("warning: the model is not deterministic: two forward passes of the same images differ by up to "
           "{diff:.4g} in the logits (dropout in training mode, or a randomised defence?); attacks without EOT "
           "overestimate its robustness")


class OutsideThreatModel(RuntimeError):
    """An adversarial example left the eps ball or [0, 1]."""


def check_in_ball(x: torch.Tensor, adv: torch.Tensor, eps: float, norm: str = "Linf") -> float:
    """Raise ``OutsideThreatModel`` if any adversarial example leaves the ``norm`` ball of radius
    eps (tolerance eps * (1 + ``BALL_REL``) + ``BALL_ABS``) or [0, 1] (``RANGE_TOL``); return the
    largest perturbation norm."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {', '.join(NORMS)}")
    if not len(x):
        return 0.0
    d = (adv - x).flatten(1)
    dist = (d.abs().amax() if norm == "Linf" else d.norm(p=2 if norm == "L2" else 1, dim=1).max()).item()
    lo, hi = adv.min().item(), adv.max().item()
    if dist > eps * (1 + BALL_REL) + BALL_ABS or lo < -RANGE_TOL or hi > 1 + RANGE_TOL:
        raise OutsideThreatModel(f"adversarial example outside the threat model: {norm} {dist:.6g} > eps {eps:.6g}"
                                 f" or range [{lo:.4g}, {hi:.4g}]")
    return dist


# --------------------------------------------------------------------------------------------
# the model's determinism (run.model_checks) and the randomness flag


def determinism(model, x: torch.Tensor) -> dict:
    """``run.model_checks`` of results.json: ``deterministic`` (the two passes' logits are equal),
    ``max_logit_difference`` (the largest absolute difference; NaN in the same place counts as
    equal) and ``n`` (how many images).  The global random state is saved and restored around the
    passes, so a stochastic model's draws here shift no later random draw of the run."""
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        a, b = model.logits(x), model.logits(x)
    diff = (a.double() - b.double()).abs()
    same_nan = torch.isnan(a) & torch.isnan(b)
    diff = torch.where(same_nan, torch.zeros_like(diff), diff)
    worst = float(diff.max()) if diff.numel() else 0.0
    if worst != worst:  # NaN in one pass only: differs, by no number
        return {"deterministic": False, "max_logit_difference": None, "n": int(len(x))}
    return {"deterministic": worst == 0.0, "max_logit_difference": worst, "n": int(len(x))}


def check_model(model, x: torch.Tensor, log) -> dict:
    """``determinism`` on the first ``N_IMAGES`` of ``x``, with the warning line where it fails."""
    rec = determinism(model, x[:N_IMAGES])
    if not rec["deterministic"]:
        diff = rec["max_logit_difference"]
        log(WARNING.format(diff=diff if diff is not None else float("nan")))
    return rec


def flag(name: str, message: str, **evidence) -> dict:
    return {"flag": name, "message": message, **evidence}


def randomness_flag(model, x: torch.Tensor, eot: int | None, attack: str) -> dict | None:
    """``randomness_without_eot`` when two passes of the first ``N_IMAGES`` of x differ and the
    attack drew its gradient once (``eot`` None or 1)."""
    if eot is not None and eot > 1:
        return None
    rec = determinism(model, x[:N_IMAGES])
    if rec["deterministic"]:
        return None
    return flag("randomness_without_eot", f"{attack}: the model is random (two passes differ by up to "
                f"{rec['max_logit_difference']}) and the attack used no EOT: its robust accuracy is over-estimated; "
                "use the adaptive attacks (--eot, --defense-repeats)", max_logit_difference=rec["max_logit_difference"])


# --------------------------------------------------------------------------------------------
# gradients


def masked_share(model, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of points whose cross-entropy input gradient is all zero or not finite (one backward)."""
    if not len(x):
        return 0.0
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(model.logits(xg).double(), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, xg, allow_unused=True)
    if g is None:
        return 1.0
    g = g.flatten(1)
    bad = ~torch.isfinite(g).all(1) | (g == 0).all(1)
    return float(bad.double().mean())


def gradient_flag(share: float, n: int, attack: str) -> dict | None:
    if share <= MASKED_SHARE:
        return None
    return flag("masked_gradients", f"{attack}: the input gradient is zero or non-finite on {share:.0%} of {n} "
                "points (masked or shattered gradients: use BPDA, --defense-repeats and a black-box attack)",
                share=share, n=n)


# --------------------------------------------------------------------------------------------
# the opt-in attack checks and AutoAttack's own


def rise_flag(robust: torch.Tensor, stronger: torch.Tensor, what: str) -> dict | None:
    """``more_steps_stronger``: the stronger attack (more steps and restarts) left more points robust."""
    n = int(robust.numel())
    rise = int(stronger.sum()) - int(robust.sum())
    if n == 0 or rise <= RISE_SHARE * n:
        return None
    return flag("more_steps_stronger", f"{what}: robust accuracy rose from {int(robust.sum())} to "
                f"{int(stronger.sum())} of {n} points with twice the steps and two restarts: the attack has not "
                "converged or the gradients are unreliable", robust=int(robust.sum()), stronger=int(stronger.sum()), n=n)


def large_eps(norm: str, shape) -> float:
    """The large radius of ``large_eps_not_zero``: L-inf 0.5, L2 / L1 half the diameter of [0, 1]^d."""
    d = math.prod(shape)
    return {"Linf": LARGE_LINF_EPS, "L2": 0.5 * math.sqrt(d), "L1": 0.5 * d}[norm]


def large_eps_flag(robust: torch.Tensor, eps: float, norm: str) -> dict | None:
    n = int(robust.numel())
    share = float(robust.double().mean()) if n else 0.0
    if share <= LARGE_EPS_SHARE:
        return None
    return flag("large_eps_not_zero", f"robust accuracy {share:.1%} at {norm} eps {eps:g} (it should be near 0 "
                "at so large a radius): the attack is failing, not the model resisting", share=share, eps=eps, n=n)


def square_flag(warnings: list[str]) -> dict | None:
    """``black_box_stronger`` from pyautoattack's ``check_square_sr`` warning."""
    hits = [w for w in warnings if "Square Attack has decreased" in w]
    if not hits:
        return None
    return flag("black_box_stronger", "AutoAttack: Square (black-box) lowered robust accuracy below the white-box "
                "attacks: their gradients are unreliable", warning=hits[0])


def collect(flags) -> list[dict]:
    """The raised flags of an iterable of flag-or-None."""
    return [f for f in flags if f]


def run_flags(metrics: dict) -> list[dict]:
    """Every flag the metrics of a run recorded (``details["flags"]``), each with its metric, once."""
    out, seen = [], set()
    for name, r in metrics.items():
        for f in (getattr(r, "details", None) or {}).get("flags", []) or []:
            key = (f.get("flag"), f.get("message"))
            if key not in seen:
                seen.add(key)
                out.append(dict(f, metric=name))
    return out
