"""Fisher scores (suite ``score``; paper Sec. 4.3, Eq. 21-24, Table 2).

With the score s(x, y) = grad_x log p(x, y) = -grad_x E(x, y), the score-matching objective
(Eq. 22) read on the energy gives, per data point,

    JFS(x, y) = 0.5 ||grad_x E(x, y)||^2 - tr(Hess_x E(x, y))        (Eq. 23, joint energy)
    MFS(x)    = 0.5 ||grad_x E(x)||^2    - tr(Hess_x E(x))           (Eq. 24, marginal energy)

``jfs`` and ``mfs`` are their means over the first ``n_score`` test points (ground-truth labels for
the joint energy).  Lower is better (the model's score field is closer to the data's).  Their
decomposition is reported as metrics of its own: ``jfs_grad`` and ``mfs_grad`` (the gradient term,
0.5 E||grad_x E||^2 >= 0) and ``jfs_trace`` and ``mfs_trace`` (the trace term, E tr Hess_x E), so
``jfs = jfs_grad - jfs_trace`` (likewise mfs); each with the standard error of its own mean.  On a
piecewise-linear network (the paper's leaky-ReLU WRN) ``jfs_trace`` is 0 and ``mfs_trace`` is the
log-sum-exp curvature -sum_k p_k ||grad f_k - sum_j p_j grad f_j||^2 <= 0, so both scores are >= 0;
a smooth network (SiLU) adds the logits' own curvature, which can dominate and make them negative.

Input space (``fisher_space``).  ``pixel`` (default): derivatives with respect to the image x in
[0, 1], the EnergyModel's input, so the model's normalisation is part of E.  ``model``: with
respect to the network's own input z = (x - m) / s (the normalised image; the paper computed its
Table 2 numbers on its model's input).  As grad_z E = s grad_x E and Hess_z E = s Hess_x E s, a
per-pixel std s scales both terms: with one s for all channels the model-space scores are s^2
times the pixel-space ones (s = 0.5 for the [-1, 1] scaling of JEM/JEAT: 1/4), so the two are
never comparable.  ``details['space']`` names the space and ``details['normalisation']`` the
model's m and s.

Trace.  Hutchinson's estimator with ``probes`` Rademacher vectors v (entries +-1):
tr(H) = E_v[v^T H v].  The quadratic forms v^T H v = d^2/dt^2 E(x + t v) at t = 0 of all probes of
a batch of points come from batched passes (a few probes at a time), never a loop over points or
probes.  From the logits f, their first and second directional derivatives f' and f'' along v
give both energies at once: v^T Hess E(x, y) v = -f''_y and v^T Hess E(x) v =
-(sum_k p_k f''_k + sum_k p_k (f'_k - sum_j p_j f'_j)^2), p = softmax(f).  Three ways to get f', f''
(``method``; ``auto`` takes the first that the network supports; the engines are ``bench.engines.taylor``'s):

- ``jet`` (default): second-order Taylor mode through the network traced with torch.fx, each
  value carrying (value, first, second derivative) for every probe.  A linear layer (conv,
  linear, eval-mode batch norm, pooling, reshapes) maps both derivatives in one batched call; an
  elementwise activation (ReLU, leaky ReLU, SiLU, softplus, ELU, sigmoid, tanh) uses its
  closed-form derivatives (as autograd: 0 at a ReLU kink); any other op is differentiated
  exactly by a nested jvp of that op alone.  The traced network's values are checked against
  the model's own logits; a network that cannot be traced falls back (a model left in training
  mode is differentiated in eval mode, ``bench.core.energy.evaluates``, and its mode restored).
- ``forward``: the same by forward-over-forward through the whole network (a nested
  ``torch.func.jvp``, ``vmap``-ed over the probes), about 2x the arithmetic of ``jet``.
- ``reverse``: one first backward with ``create_graph``, then one batched double backward per
  energy (``torch.autograd.grad(..., is_grads_batched=True)``, a vmap over the probes).

The gradient term comes from one ordinary backward pass per energy.  ``torch.compile`` is not
used (it does not support double backward).  The probes of all points are drawn up front from the
group's own generator, so the estimates do not depend on the batch size.  With
``exact_trace=True`` the trace is exact instead: the D quadratic forms e_d^T H e_d = H_dd with the
basis vectors (batched the same way, in chunks), practical for small inputs (8x8 digits: D = 64).
``details['second_derivatives']`` records the method that ran.

For a piecewise-linear network (ReLU, max-pool, eval-mode batch norm) the joint energy is
piecewise linear in x, so its Hessian, and the joint trace, is exactly 0 almost everywhere (every
method gives exactly 0); the marginal energy keeps the logsumexp's curvature.  All three methods
are tested against ``torch.autograd.functional.hessian`` and against each other.

``std`` of ``jfs`` and ``mfs`` is the standard error of the mean over points, sd / sqrt(n), of the
per-point estimates (which include the Hutchinson noise).  ``details`` records the mean gradient
term (0.5 ||grad E||^2) and the mean trace term (tr Hess E) separately, the per-point standard
deviation, and for Hutchinson the part of the standard error due to the probes alone.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from bench.core import cost, outcomes
from bench.core.stats import mean_se
from bench.metrics import STABLE, Metric, Result, register, standard_error

if TYPE_CHECKING:
    import torch

    from bench.metrics.context import Context
SPACES = {"pixel": "pixel: derivatives w.r.t. the image x in [0, 1] (the model's normalisation is part of E)",
          "model": "model: derivatives w.r.t. the network's input z = (x - mean) / std (the paper's convention)"}
STD_NOTE = "standard error of the mean over points, sd / sqrt(n), of the per-point estimates"


def _summary(terms: dict[str, torch.Tensor], exact: bool, probes: int) -> Result:
    s = terms["score"].double()
    n = len(s)
    mean, se, sd = mean_se(s)
    details = {
        "grad_term": terms["grad"].double().mean().item(),
        "trace_term": terms["trace"].double().mean().item(),
        "sd": sd,
        "median": s.median().item(),
        "trace": "exact" if exact else f"hutchinson ({probes} rademacher probes)",
        "std": STD_NOTE,
        outcomes.VALUES_KEY: outcomes.pack_values(s, "score per point in order"),
    }
    if not exact and "trace_probe_var" in terms and probes > 1:
        details["trace_probe_se"] = math.sqrt(terms["trace_probe_var"].double().sum().item()) / n
    return Result(mean, se, n, details=details)


SCORES = (("jfs", "joint"), ("mfs", "marginal"))
TERMS = {"grad": ("0.5 E||grad_x E||^2, the gradient term of", "grad", (0.0, None)),
         "trace": ("E tr Hess_x E, the trace term of", "trace", (None, None))}


def _metrics() -> tuple[Metric, ...]:
    """jfs, mfs (lower is better) and their terms ``jfs_grad``, ``jfs_trace``, ``mfs_grad``,
    ``mfs_trace`` (no direction: a term alone is no score; the gradient terms are >= 0)."""
    tol = standard_error(0.01, 0.10)
    out = [Metric(m, "score", False, column=m.upper(), tolerance=tol, portable=STABLE) for m, _ in SCORES]
    out += [Metric(f"{m}_{t}", "score", None, column=f"{m.upper()} {t}", tolerance=tol, portable=STABLE,
                   bounds=TERMS[t][2]) for m, _ in SCORES for t in TERMS]
    return tuple(out)


def fisher_cost(s, z: cost.Sizes) -> cost.Work:
    """n_score points: the gradients of both energies, and per probe (or, with exact_trace, per input
    dimension) a Taylor-mode pass (``jet``: the derivatives ride along a batched forward; timed as
    a forward+backward: timed as a forward, the group took 2.8 times its estimate on the
    Fashion-MNIST WRN and 1.4 times on the digits CNN)."""
    n = cost.count(s, "n_score", z.n_test)
    per = math.prod(z.image_shape) if s.get("exact_trace") else int(s["probes"])
    return (cost.passes("backward", n, cost.batch(s), 2)
            + cost.passes("backward", n * per, cost.batch(s), note="jet passes timed as forward+backward"))


@register("fisher", "score", metrics=_metrics(), cost=fisher_cost,
          settings=("seed", "n_score", "probes", "exact_trace", "fisher_space"), sharded=True)
def fisher_group(ctx: Context) -> dict[str, Result]:
    """``jfs`` (Eq. 23, ground-truth labels) and ``mfs`` (Eq. 24) on the first ``n_score`` test
    points; Hutchinson with ``probes`` Rademacher probes, or the exact trace (``exact_trace``).
    Always on the plain float32 eager network (no fast path: double backward, torch.fx trace).
    Under torchrun every rank takes its share of the batches (the probes of all points are drawn
    up front, identically on every rank) and the per-point terms are gathered."""
    from bench.engines.fisher_terms import fisher_scores, model_space

    s = ctx.settings
    space = s.get("fisher_space") or "pixel"  # bench.core.settings.validate checked it
    split = ctx.data.test.subset(s["n_score"])
    exact = bool(s.get("exact_trace"))
    probes = int(s["probes"])
    info = {}
    model, x = ctx.model, split.x
    if space == "model":  # the same points and probes, differentiated in z = (x - m) / s
        model = model_space(ctx.model)
        x = (x - ctx.model.mean.cpu()) / ctx.model.std.cpu()
    with ctx.model.plain():
        terms = fisher_scores(model, x, split.y, probes=probes, exact=exact,
                              generator=None if exact else ctx.generator("fisher"), run=ctx.execution, info=info)
    how = {"jet": "second-order Taylor mode through the torch.fx-traced network",
           "forward": "forward-over-forward (nested torch.func.jvp, vmap over probes)",
           "reverse": "double backward (autograd.grad, is_grads_batched over probes)"}
    res = {}
    for name, kind in SCORES:
        r = _summary(terms[kind], exact, probes)
        r.details["energy"] = "E(x, y) = -f(x)[y], ground-truth y" if kind == "joint" else "E(x) = -logsumexp f(x)"
        r.details["second_derivatives"] = "; ".join(how[m] for m in sorted(info.get("methods", ())))
        r.details["space"] = SPACES[space]
        r.details["fisher_space"] = space
        r.details["normalisation"] = {"mean": ctx.model.mean.flatten().tolist(), "std": ctx.model.std.flatten().tolist()}
        res[name] = r
        for t, (what, key, _) in TERMS.items():  # the decomposition, each term a metric of its own
            mean, se, sd = mean_se(terms[kind][key].double())
            res[f"{name}_{t}"] = Result(mean, se, r.n, details={
                "term": f"{what} {name} ({r.details['energy']})", "sd": sd, "std": STD_NOTE,
                "trace": r.details["trace"], "fisher_space": space,
                outcomes.VALUES_KEY: outcomes.pack_values(terms[kind][key], f"{t} term per point in order")})
    return res
