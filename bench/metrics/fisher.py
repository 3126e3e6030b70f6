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

import torch

from bench.core import cost, outcomes
from bench.core.energy import Energy, EnergyModel, evaluates
from bench.engines.taylor import JetUnsupported, forward_over_forward, hvp_batched, jet
from bench.metrics import STABLE, Context, Metric, Result, mean_se, register, standard_error
from bench.runtime.execution import Execution

KINDS = (Energy.JOINT, Energy.MARGINAL)
SPACES = {"pixel": "pixel: derivatives w.r.t. the image x in [0, 1] (the model's normalisation is part of E)",
          "model": "model: derivatives w.r.t. the network's input z = (x - mean) / std (the paper's convention)"}
STD_NOTE = "standard error of the mean over points, sd / sqrt(n), of the per-point estimates"


def rademacher(shape, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Rademacher signs (+1 / -1, equally likely) as int8; ``.float()`` them to use as probes."""
    device = generator.device if generator is not None and device is None else device
    r = torch.randint(0, 2, tuple(shape), generator=generator, device=device, dtype=torch.int8)
    return r.mul_(2).sub_(1)


def _energies(f: torch.Tensor, y: torch.Tensor | None, kinds) -> dict[str, torch.Tensor]:
    """Energies of each kind from the logits f (B, K)."""
    out = {}
    for k in kinds:
        if k == "joint":
            if y is None:
                raise ValueError("the joint energy E(x, y) needs labels y")
            out[k] = -f.gather(1, y.view(-1, 1)).squeeze(1)
        elif k == "marginal":
            out[k] = -torch.logsumexp(f, dim=1)
        else:
            raise ValueError(f"unknown energy {k!r}; expected joint or marginal")
    return out


def _gradients(model: EnergyModel, x: torch.Tensor, y, kinds, create_graph: bool):
    """(x as a leaf requiring grad, logits, {kind: grad_x E}) from one forward pass."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        f = model.logits(x)
        energies = _energies(f, y, kinds)
        grads = {}
        for i, k in enumerate(kinds):
            (grads[k],) = torch.autograd.grad(energies[k].sum(), x, create_graph=create_graph,
                                              retain_graph=create_graph or i < len(kinds) - 1)
    return x, f.detach(), grads


def _quad_from_logits(f: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor, y, kinds) -> dict:
    """v^T Hess E v of each energy from the logits f (B, K) and their first and second directional
    derivatives f1 = J v, f2 = (v^T Hess f_k v)_k, both (c, B, K):
    v^T Hess E(x, y) v = -f2_y; v^T Hess E(x) v = -(sum_k p_k f2_k + sum_k p_k (f1_k - pbar)^2)
    with p = softmax(f), pbar = sum_k p_k f1_k (the second derivative of logsumexp along v)."""
    out = {}
    for k in kinds:
        if k == "joint":
            out[k] = -f2.gather(2, y.view(1, -1, 1).expand(len(f2), -1, 1)).squeeze(2)
        else:
            p = torch.softmax(f, dim=1).unsqueeze(0)
            mean1 = (p * f1).sum(2, keepdim=True)
            out[k] = -((p * f2).sum(2) + (p * (f1 - mean1).square()).sum(2))
    return out


def _quad_forward(model: EnergyModel, x: torch.Tensor, y, f: torch.Tensor, vs: torch.Tensor, kinds) -> dict:
    """v^T Hess E v for every probe v (vs (c, B, ...) -> (c, B)), both energies from one pass:
    forward-over-forward (``bench.engines.taylor.forward_over_forward``) of the logits."""
    f1, f2 = forward_over_forward(model, x, vs)  # (c, B, K) each
    return _quad_from_logits(f, f1, f2, y, kinds)


def _quad_jet(model: EnergyModel, x: torch.Tensor, y, f: torch.Tensor, vs: torch.Tensor, kinds) -> dict:
    """The same quadratic forms by second-order Taylor mode (``bench.engines.taylor.jet``): one pass through the
    traced network carrying (value, first, second directional derivative); the values are
    checked against the model's own logits f."""
    fj, f1, f2 = jet(model, x, vs)
    scale = f.abs().max().clamp_min(1.0)
    if fj.shape != f.shape or not torch.allclose(fj, f, rtol=1e-4, atol=1e-5 * float(scale)):
        raise JetUnsupported("the traced network's values differ from the model's")
    return _quad_from_logits(f, f1, f2, y, kinds)


def _quad_reverse(x: torch.Tensor, grads: dict, vs: torch.Tensor, kinds) -> dict:
    """v^T Hess E v by double backward (reverse-over-reverse), all probes of a chunk at once."""
    return {k: (hvp_batched(grads[k], x, vs) * vs).flatten(2).sum(2).detach() for k in kinds}


METHODS = ("auto", "jet", "forward", "reverse")
# images (points x probes) per batched second-order pass when fisher_scores picks the chunk: on a
# CPU about 512 keeps the working set in cache; on a GPU 4 batches' worth (memory scales with it)
PASS_IMAGES_CPU = 512
PASS_BATCHES_CUDA = 4
_FALLBACK_ERRORS = (JetUnsupported, RuntimeError, NotImplementedError, TypeError, ValueError)


def _directions(x: torch.Tensor, probes: torch.Tensor | None, exact: bool, chunk: int | None) -> list[torch.Tensor]:
    """The directions v of the quadratic forms v^T H v, in chunks (c, B, C, H, W): the Rademacher
    probes (B, M, ...) of Hutchinson's estimator, or with ``exact`` the D basis vectors."""
    b, shape = len(x), tuple(x.shape[1:])
    if exact:
        d = x[0].numel()
        chunk = chunk or 64
        eye = torch.eye(d, device=x.device, dtype=x.dtype)
        return [eye[s:s + chunk].view(-1, 1, *shape).expand(-1, b, *shape).contiguous() for s in range(0, d, chunk)]
    if probes is None:
        raise ValueError("Hutchinson's estimator needs probes (B, M, ...); or pass exact=True")
    if probes.dim() != x.dim() + 1 or probes.shape[0] != b or tuple(probes.shape[2:]) != shape:
        raise ValueError(f"probes must have shape ({b}, M, {', '.join(map(str, shape))}), "
                         f"got {tuple(probes.shape)}")
    m = probes.shape[1]
    chunk = chunk or m
    return [probes[:, s:s + chunk].transpose(0, 1).to(device=x.device, dtype=x.dtype).contiguous()
            for s in range(0, m, chunk)]


def _quadratic_forms(model: EnergyModel, x: torch.Tensor, y, chunks: list[torch.Tensor], kinds,
                     method: str) -> tuple[dict, dict, str]:
    """({kind: grad_x E (B, ...)}, {kind: v^T Hess E v (n_directions, B)}, the method used): the
    gradients from one backward pass, the quadratic forms by ``method`` (``auto``: the first of
    jet, forward, reverse that the network supports)."""
    order = {"auto": ["jet", "forward", "reverse"]}.get(method, [method])
    xg, f, grads = _gradients(model, x, y, kinds, create_graph=order == ["reverse"])
    for how in order:
        quads = {k: [] for k in kinds}
        if how == "reverse":
            if not any(g.requires_grad for g in grads.values()) and len(order) > 1:
                xg, f, grads = _gradients(model, x, y, kinds, create_graph=True)
            with torch.enable_grad():
                for vs in chunks:
                    for k, q in _quad_reverse(xg, grads, vs, kinds).items():
                        quads[k].append(q)
            return grads, {k: torch.cat(q) for k, q in quads.items()}, how
        quad = _quad_jet if how == "jet" else _quad_forward  # looked up now (tests replace them)
        try:
            for vs in chunks:
                for k, q in quad(model, x.detach(), y, f, vs, kinds).items():
                    quads[k].append(q)
            return grads, {k: torch.cat(q) for k, q in quads.items()}, how
        except _FALLBACK_ERRORS:
            if how == order[-1]:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


@evaluates
def fisher_terms(model: EnergyModel, x: torch.Tensor, y: torch.Tensor | None, probes: torch.Tensor | None = None,
                 kinds=KINDS, exact: bool = False, chunk: int | None = None, method: str = "auto",
                 info: dict | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Per-point terms of the Fisher scores of one batch.

    ``x`` (B, C, H, W) in [0, 1]; ``y`` (B,) labels (needed for ``joint``).  ``probes``: Rademacher
    probes (B, M, C, H, W) (int8 or float) for Hutchinson's estimator; ignored when ``exact``, which
    uses the D basis vectors instead (v^T H v = H_dd, summed).  ``chunk``: probes (or basis
    vectors) per batched pass (default: all probes, 64 basis vectors).  ``method`` for the
    quadratic forms v^T H v: ``jet`` (second-order Taylor mode through the traced network),
    ``forward`` (nested jvp of the whole network), ``reverse`` (double backward per energy), or
    ``auto``: the first of these that the network supports.  ``info``, if given, receives the
    method used.  Returns ``{kind: {"grad": 0.5 ||grad E||^2 (B,), "trace": tr Hess E (B,),
    "score": grad - trace (B,), "trace_probe_var": var over probes of v^T H v / M (B,)
    (Hutchinson only)}}``, detached.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    chunks = _directions(x, probes, exact, chunk)
    grads, quads, used = _quadratic_forms(model, x, y, chunks, kinds, method)
    if info is not None:
        info["method"] = used
    out = {}
    for k in kinds:
        q = quads[k]
        t = {"grad": 0.5 * grads[k].detach().flatten(1).pow(2).sum(1)}
        if exact:
            t["trace"] = q.sum(0)
        else:
            m = len(q)
            t["trace"] = q.mean(0)
            t["trace_probe_var"] = q.var(0) / m if m > 1 else torch.full((len(x),), math.nan, device=x.device)
        t["score"] = t["grad"] - t["trace"]
        out[k] = t
    return out


@evaluates
def fisher_scores(model: EnergyModel, x: torch.Tensor, y: torch.Tensor | None, probes: int = 16,
                  exact: bool = False, generator: torch.Generator | None = None, run: Execution = Execution(),
                  kinds=KINDS, chunk: int | None = None, method: str = "auto",
                  info: dict | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Per-point Fisher-score terms (see ``fisher_terms``) of all of ``x``, in batches of
    ``run.batch_size`` on ``run``'s device; results on CPU, in point order.

    The Rademacher probes of all points, (N, probes, C, H, W), are drawn up front from
    ``generator`` (on its device), so the estimates do not depend on the batch size or on how
    torchrun ranks share the batches (``run.sharded``: this rank computes its share and the terms of
    all points are gathered).  ``chunk`` (probes or basis vectors per pass) defaults to about
    ``PASS_IMAGES_CPU`` points x probes per pass on a CPU and ``PASS_BATCHES_CUDA`` batches' worth
    on a GPU.  ``info``, if given, receives the set of methods used (``jet`` / ``forward`` /
    ``reverse``) on any rank."""
    device = run.on(x)
    batch_size = run.batch_size
    n = len(x)
    if chunk is None:  # probes per pass: a small working set is fastest on a CPU (cache)
        per_pass = PASS_IMAGES_CPU if device.type == "cpu" else PASS_BATCHES_CUDA * batch_size
        chunk = max(1, per_pass // max(1, min(batch_size, n)))
    probe_all = None
    if not exact:
        gdev = generator.device if generator is not None else device
        probe_all = rademacher((n, probes, *x.shape[1:]), generator, gdev)
    parts = {k: {} for k in kinds}
    starts = [b * batch_size for b in run.my_batches(n)]
    for i in run.iterate(starts, "fisher", len(starts)):
        xb = x[i:i + batch_size].to(device)
        yb = y[i:i + batch_size].to(device) if y is not None else None
        pb = probe_all[i:i + batch_size].to(device) if probe_all is not None else None
        used = {}
        t = fisher_terms(model, xb, yb, pb, kinds, exact, chunk, method, used)
        if info is not None:
            info.setdefault("methods", set()).add(used["method"])
        for k in kinds:
            for name, v in t[k].items():
                parts[k].setdefault(name, []).append(v.cpu())
    if run.sharded and info is not None:  # a rank may have had no batch
        info["methods"] = set(run.gather_objects(sorted(info.get("methods", set()))))
    names = ("grad", "trace", "score") + (() if exact else ("trace_probe_var",))  # also with no batch
    return {k: {name: run.collect(parts[k].get(name, []), torch.float32) for name in names} for k in kinds}


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


def model_space(model: EnergyModel) -> EnergyModel:
    """The network of ``model`` as an EnergyModel on its own input z = (x - mean) / std (mean 0,
    std 1), in eval mode, for Fisher scores in the model's input space."""
    z_model = EnergyModel(model.net, 0.0, 1.0, model.input_shape, model.num_classes)
    return z_model.to(model.mean.device).eval()


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
