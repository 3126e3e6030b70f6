"""Second-order directional derivatives of a network, for Hessian traces (``bench.metrics.fisher``).

For inputs x (B, ...) and directions v (M per point), the first and second derivatives of the
network's outputs along each v, d/dt f(x + t v) and d^2/dt^2 f(x + t v) at t = 0, in three ways:

- ``jet``: second-order Taylor mode through the network traced with torch.fx, each value
  carrying (value, first, second derivative) for every direction.  A linear layer (conv, linear,
  eval-mode batch norm, pooling, reshapes) maps both derivatives in one batched call; an
  elementwise activation (ReLU, leaky ReLU, SiLU, softplus, ELU, sigmoid, tanh) uses its
  closed-form derivatives (as autograd: 0 at a ReLU kink); any other op is differentiated exactly
  by a nested jvp of that op alone.  ``JetUnsupported`` for a network that cannot be traced or is
  in training mode.
- ``forward_over_forward``: the same by a nested ``torch.func.jvp`` of the whole network,
  ``vmap``-ed over the directions.
- ``hvp_batched``: Hessian-vector products of a scalar function's gradient (reverse over reverse,
  ``is_grads_batched`` over the directions); v^T H v follows.
"""

from __future__ import annotations

import importlib
import operator
import warnings
import weakref

import torch
import torch.fx

from bench.energy import evaluates


def _quiet_jvp_import() -> None:
    """torch's forward-mode decompositions announce, on their first import, that torch.jit.script
    is deprecated (a FutureWarning about torch's own code): import them once with that silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated", category=FutureWarning)
        try:
            importlib.import_module("torch._decomp.decompositions_for_jvp")
        except ImportError:
            pass


def forward_over_forward(model: torch.nn.Module, x: torch.Tensor,
                         vs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d/dt f(x + t v), d^2/dt^2 f(x + t v)) at t = 0 for every direction v, vs (M, B, ...) ->
    two (M, B, ...) tensors, detached: forward-over-forward (nested ``torch.func.jvp``, ``vmap`` over
    the directions) through the whole network."""
    from torch.func import functional_call, jvp, vmap

    _quiet_jvp_import()
    # detached parameters: no autograd graph is built for them (and grad mode stays on: some
    # forward-mode rules, silu's among them, work only with grad mode enabled)
    state = {k: v.detach() for k, v in (*model.named_parameters(), *model.named_buffers())}

    def logits(z):
        return functional_call(model, state, (z,))

    def second(v):
        def first(z):
            return jvp(logits, (z,), (v,))[1]

        return jvp(first, (x,), (v,))

    with torch.enable_grad():
        f1, f2 = vmap(second)(vs)
    return f1.detach(), f2.detach()


def hvp_batched(g: torch.Tensor, x: torch.Tensor, vs: torch.Tensor) -> torch.Tensor:
    """Hessian-vector products H_b v_{m,b} for all probes m at once: vs (M, B, ...) -> (M, B, ...).
    ``g`` is the per-point gradient (B, ...) built with ``create_graph``; H is symmetric, so the
    vector-Jacobian product of g is the Hessian-vector product."""
    if not g.requires_grad:  # the gradient does not depend on x: a linear energy, H = 0
        return torch.zeros_like(vs)
    try:
        (hv,) = torch.autograd.grad(g, x, grad_outputs=vs, retain_graph=True, is_grads_batched=True,
                                    allow_unused=True)
    except RuntimeError:  # an op without a batching rule: the same products, one probe at a time
        rows = [torch.autograd.grad(g, x, grad_outputs=v, retain_graph=True, allow_unused=True)[0] for v in vs]
        hv = None if rows[0] is None else torch.stack(rows)
    return torch.zeros_like(vs) if hv is None else hv



# --------------------------------------------------------------------------------------------
# second-order Taylor mode ("jet"): (value, first, second directional derivative) through a graph


class JetUnsupported(RuntimeError):
    """The network cannot be run in Taylor mode (not traceable, training mode, values differ)."""


class _Jet:
    """A value p (B, ...) with its first and second directional derivatives along each probe:
    d1, d2 (M, B, ...); d2 None stands for zero (the input's second derivative)."""

    __slots__ = ("p", "d1", "d2", "both")

    def __init__(self, p, d1, d2, both=None):
        self.p, self.d1, self.d2 = p, d1, d2
        self.both = both  # (2M, B, ...) holding d1 then d2, when they were made together

    def stacked(self) -> torch.Tensor:
        """d1 and d2 as one (2M, B, ...) tensor (no copy when they were made together)."""
        return self.both if self.both is not None else torch.cat([self.d1, self.d2])

    @classmethod
    def of(cls, p, both: torch.Tensor) -> _Jet:
        m = len(both) // 2
        return cls(p, both[:m], both[m:], both)


_TRACES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _traced(model: torch.nn.Module):
    gm = _TRACES.get(model)
    if gm is None:
        try:
            gm = torch.fx.symbolic_trace(model)
        except Exception as e:  # control flow on values, unsupported Python: no Taylor mode
            raise JetUnsupported(f"cannot trace the network: {type(e).__name__}: {e}") from None
        _TRACES[model] = gm
    return gm


def _batched(fn, t: torch.Tensor) -> torch.Tensor:
    """Apply a batch-wise op ``fn`` ((B, ...) -> (B, ...)) to derivatives (M, B, ...) at once."""
    m, b = t.shape[:2]
    out = fn(t.reshape(m * b, *t.shape[2:]))
    return out.reshape(m, b, *out.shape[1:])


def _linear(fn, j: _Jet, primal_fn=None) -> _Jet:
    """An op linear in its input (bias-free part ``fn``): derivatives pass through ``fn``; the value
    goes through ``primal_fn`` (the op with its bias) or ``fn``."""
    p = (primal_fn or fn)(j.p)
    if j.d2 is None:
        return _Jet(p, _batched(fn, j.d1), None)
    return _Jet.of(p, _batched(fn, j.stacked()))


def _vmapped_linear(call, j: _Jet) -> _Jet:
    """An op linear in its input whose arguments may depend on the batch layout (view, flatten,
    pooling functions...): derivatives through ``vmap`` over the probes."""
    from torch.func import vmap

    p = call(j.p)
    if j.d2 is None:
        return _Jet(p, vmap(call)(j.d1), None)
    return _Jet.of(p, vmap(call)(j.stacked()))


def _pointwise(j: _Jet, y, d1, d2) -> _Jet:
    """y = g(z) elementwise with g' = d1, g'' = d2 (d2 None: 0): chain rule to second order,
    y' = g' z', y'' = g' z'' + g'' z'^2."""
    if j.d2 is None and d2 is None:
        return _Jet(y, d1 * j.d1, None)
    m = len(j.d1)
    both = torch.empty((2 * m, *j.d1.shape[1:]), dtype=j.d1.dtype, device=j.d1.device)
    first, second = both[:m], both[m:]
    torch.mul(j.d1, d1, out=first)
    if j.d2 is None:
        torch.mul(j.d1, d2, out=second)
        second.mul_(j.d1)
    else:
        torch.mul(j.d2, d1, out=second)
        if d2 is not None:
            second.addcmul_(j.d1 * d2, j.d1)
    return _Jet.of(y, both)


def _activation(mod, z: torch.Tensor):
    """(value, g', g'') of an elementwise activation module at z, as torch differentiates it
    (derivative 0 at a ReLU kink, as autograd), or None when the module is not one of these."""
    import torch.nn.functional as F
    from torch import nn

    t = type(mod)
    if t is nn.ReLU:
        return F.relu(z), (z > 0).to(z.dtype), None
    if t is nn.LeakyReLU:
        return F.leaky_relu(z, mod.negative_slope), torch.where(z > 0, 1.0, mod.negative_slope).to(z.dtype), None
    if t is nn.SiLU:
        s = torch.sigmoid(z)
        return z * s, s * (1 + z * (1 - s)), s * (1 - s) * (2 + z * (1 - 2 * s))
    if t is nn.Softplus:
        lin = z * mod.beta > mod.threshold
        s = torch.sigmoid(z * mod.beta)
        return (F.softplus(z, mod.beta, mod.threshold), torch.where(lin, 1.0, s),
                torch.where(lin, 0.0, mod.beta * s * (1 - s)))
    if t is nn.ELU:
        neg = mod.alpha * torch.exp(z)
        pos = z > 0
        return F.elu(z, mod.alpha), torch.where(pos, 1.0, neg), torch.where(pos, 0.0, neg)
    if t is nn.Sigmoid:
        s = torch.sigmoid(z)
        return s, s * (1 - s), s * (1 - s) * (1 - 2 * s)
    if t is nn.Tanh:
        th = torch.tanh(z)
        return th, 1 - th.square(), -2 * th * (1 - th.square())
    return None


def _add(a, b, sign: float) -> _Jet:
    """a + sign * b with either (or both) a jet."""
    if isinstance(a, _Jet) and isinstance(b, _Jet):
        if a.both is not None and b.both is not None:
            return _Jet.of(a.p + sign * b.p, torch.add(a.both, b.both, alpha=sign))
        d2 = (a.d2 if b.d2 is None else (sign * b.d2 if a.d2 is None else a.d2 + sign * b.d2))
        return _Jet(a.p + sign * b.p, a.d1 + sign * b.d1, d2)
    if isinstance(a, _Jet):
        return _Jet(a.p + sign * b, a.d1, a.d2, a.both)
    if sign == 1.0:
        return _Jet(a + b.p, b.d1, b.d2, b.both)
    return _mul(_Jet(b.p - a, b.d1, b.d2, b.both), -1.0)


def _mul(a, b) -> _Jet:
    if isinstance(a, _Jet) and isinstance(b, _Jet):  # product rule, to second order
        d2 = 2 * a.d1 * b.d1
        if a.d2 is not None:
            d2 = d2 + a.d2 * b.p
        if b.d2 is not None:
            d2 = d2 + a.p * b.d2
        return _Jet(a.p * b.p, a.d1 * b.p + a.p * b.d1, d2)
    j, c = (a, b) if isinstance(a, _Jet) else (b, a)
    if j.both is not None:
        return _Jet.of(j.p * c, j.both * c)
    return _Jet(j.p * c, j.d1 * c, None if j.d2 is None else j.d2 * c)


def _generic(call, args, kwargs) -> _Jet:
    """Any op, exactly: its first and second directional derivatives by (nested) jvp of the op
    alone, vmapped over the probes: y'' = J z'' + z'^T Hess(op) z'."""
    from torch.func import jvp, vmap
    from torch.utils._pytree import tree_flatten, tree_unflatten

    leaves, spec = tree_flatten((args, kwargs))
    idx = [i for i, v in enumerate(leaves) if isinstance(v, _Jet)]

    def g(*ps):
        ls = list(leaves)
        for i, p in zip(idx, ps, strict=True):
            ls[i] = p
        a, k = tree_unflatten(ls, spec)
        return call(*a, **k)

    prim = tuple(leaves[i].p.clone() for i in idx)  # clones: an in-place op must not touch them
    d1s = tuple(leaves[i].d1 for i in idx)
    has2 = any(leaves[i].d2 is not None for i in idx)
    d2s = tuple(leaves[i].d2 if leaves[i].d2 is not None else torch.zeros_like(leaves[i].d1) for i in idx)

    def per(t1, t2):
        y1 = jvp(g, prim, t1)[1]
        y2 = jvp(lambda *u: jvp(g, u, t1)[1], prim, t1)[1]
        if has2:
            y2 = y2 + jvp(g, prim, t2)[1]
        return y1, y2

    _quiet_jvp_import()
    with torch.enable_grad():
        y = g(*prim)
        y1, y2 = vmap(per)(d1s, d2s)
    if not isinstance(y, torch.Tensor):
        raise JetUnsupported(f"op {call} returns {type(y).__name__}, not a tensor")
    return _Jet(y.detach(), y1.detach(), y2.detach())


# ops linear in their (first) tensor argument whose derivative is the op itself, via vmap
_LINEAR_FUNCTIONS = {torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze,
                     torch.unsqueeze, operator.getitem}
_LINEAR_METHODS = {"flatten", "view", "reshape", "permute", "transpose", "contiguous", "squeeze", "unsqueeze",
                   "__getitem__"}


_META_METHODS = {"size", "dim", "numel", "nelement", "stride", "is_contiguous", "get_device"}


def _value(a):
    return a.p if isinstance(a, _Jet) else a


def _linear_function(fn) -> bool:
    import torch.nn.functional as F

    return fn in _LINEAR_FUNCTIONS or fn in (F.adaptive_avg_pool2d, F.adaptive_avg_pool1d, F.avg_pool2d,
                                             F.avg_pool1d)


def _module_rule(mod, args, kwargs):
    from torch import nn

    if kwargs or len(args) != 1 or not isinstance(args[0], _Jet):
        return None
    j = args[0]
    act = _activation(mod, j.p)
    if act is not None:
        return _pointwise(j, *act)
    if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return _linear(lambda t: mod._conv_forward(t, mod.weight, None), j, mod)
    if isinstance(mod, nn.Linear):
        return _linear(lambda t: torch.nn.functional.linear(t, mod.weight), j, mod)
    if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.running_var is not None:
        scale = torch.rsqrt(mod.running_var + mod.eps)
        if mod.weight is not None:
            scale = scale * mod.weight
        scale = scale.view(-1, *[1] * (j.p.dim() - 2))
        return _linear(lambda t: t * scale, j, mod)
    if isinstance(mod, (nn.Identity, nn.Flatten, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
                        nn.AdaptiveAvgPool2d, nn.Dropout)):
        return _linear(mod, j)
    return None


def _activation_call(fn, args, kwargs):
    """The activation module equivalent to a functional call (F.relu(x), x.tanh() ...), or None."""
    import torch.nn.functional as F
    from torch import nn

    kwargs = {k: v for k, v in kwargs.items() if k != "inplace"}
    if fn in (F.relu, torch.relu, "relu") and len(args) == 1 and not kwargs:
        return nn.ReLU()
    if fn in (F.silu, "silu") and len(args) == 1 and not kwargs:
        return nn.SiLU()
    if fn in (torch.sigmoid, "sigmoid") and len(args) == 1 and not kwargs:
        return nn.Sigmoid()
    if fn in (torch.tanh, "tanh") and len(args) == 1 and not kwargs:
        return nn.Tanh()
    if fn is F.leaky_relu and len(args) <= 2 and set(kwargs) <= {"negative_slope"}:
        slope = args[1] if len(args) == 2 else kwargs.get("negative_slope", 0.01)
        return nn.LeakyReLU(slope) if isinstance(slope, int | float) else None
    return None


def _function_rule(fn, args, kwargs):
    act = _activation_call(fn, args, kwargs)
    if act is not None and isinstance(args[0], _Jet):
        return _pointwise(args[0], *_activation(act, args[0].p))
    if fn in (operator.add, torch.add) and len(args) == 2 and not kwargs:
        return _add(args[0], args[1], 1.0)
    if fn in (operator.sub, torch.sub) and len(args) == 2 and not kwargs:
        return _add(args[0], args[1], -1.0)
    if fn in (operator.mul, torch.mul) and len(args) == 2 and not kwargs:
        return _mul(args[0], args[1])
    if fn in (operator.truediv, torch.div) and len(args) == 2 and not kwargs and not isinstance(args[1], _Jet):
        j, c = args
        if j.both is not None:
            return _Jet.of(j.p / c, j.both / c)
        return _Jet(j.p / c, j.d1 / c, None if j.d2 is None else j.d2 / c)
    if fn in (operator.neg, torch.neg) and len(args) == 1 and not kwargs:
        return _mul(args[0], -1.0)
    if _linear_function(fn) and args and isinstance(args[0], _Jet) and not any(
            isinstance(a, _Jet) for a in (*args[1:], *kwargs.values())):
        return _vmapped_linear(lambda t: fn(t, *args[1:], **kwargs), args[0])
    return None


@evaluates
def jet(model: torch.nn.Module, x: torch.Tensor, vs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Second-order Taylor mode through ``model`` (traced with torch.fx): for inputs x (B, ...)
    and directions vs (M, B, ...) -> (f(x), d/dt f(x + t v), d^2/dt^2 f(x + t v)) at t = 0, the
    last two (M, B, ...).  Linear layers carry both derivatives in one batched call; elementwise
    activations use their closed-form derivatives; any other op is differentiated exactly by a
    nested jvp of that op alone.  Raises ``JetUnsupported`` for a model in training mode or one
    that cannot be traced."""
    if any(m.training for m in model.modules()):
        raise JetUnsupported("the model is in training mode")
    gm = _traced(model)
    env: dict = {}

    def load(a):
        return torch.fx.node.map_arg(a, lambda n: env[n])

    from torch.utils._pytree import tree_flatten

    # free each value after its last use (the graph's values are M times a forward pass's)
    last_use: dict = {}
    for node in gm.graph.nodes:
        torch.fx.node.map_arg((node.args, node.kwargs), lambda n, _u=node: last_use.__setitem__(n, _u))
    dies: dict = {}
    for n, user in last_use.items():
        dies.setdefault(user, []).append(n)

    placeholders = 0
    out = None
    with torch.no_grad():
        for node in gm.graph.nodes:
            for n in dies.get(node.prev, ()) if node.prev is not None else ():
                env.pop(n, None)
            if node.op == "placeholder":
                if placeholders:
                    raise JetUnsupported("the network takes more than one input")
                env[node] = _Jet(x, vs, None)
                placeholders += 1
                continue
            if node.op == "get_attr":  # parameters, buffers and modules are read from the model
                obj = model  # itself (the trace may be older than a .to(device))
                for part in node.target.split("."):
                    obj = getattr(obj, part)
                env[node] = obj
                continue
            if node.op == "output":
                out = load(node.args[0])
                break
            args, kwargs = load(node.args), load(node.kwargs)
            if node.op == "call_module":
                mod = model.get_submodule(node.target)
                call = mod
            elif node.op == "call_function":
                call = node.target
            else:  # call_method
                name = node.target

                def call(self, *a, _name=name, **k):
                    return getattr(self, _name)(*a, **k)

            if not any(isinstance(v, _Jet) for v in tree_flatten((args, kwargs))[0]):
                env[node] = call(*args, **kwargs)
                continue
            if (node.op == "call_method" and node.target in _META_METHODS) or \
                    (node.op == "call_function" and node.target in (getattr, len)):
                # shapes and the like: read off the value, no derivative
                env[node] = call(*torch.fx.node.map_aggregate(args, _value), **kwargs)
                continue
            res = None
            if node.op == "call_module":
                res = _module_rule(mod, args, kwargs)
            elif node.op == "call_function":
                res = _function_rule(call, args, kwargs)
            elif _activation_call(node.target, args, kwargs) is not None and isinstance(args[0], _Jet):
                j = args[0]
                res = _pointwise(j, *_activation(_activation_call(node.target, args, kwargs), j.p))
            elif node.target in _LINEAR_METHODS and isinstance(args[0], _Jet) and not any(
                    isinstance(a, _Jet) for a in (*args[1:], *kwargs.values())):
                res = _vmapped_linear(lambda t, _c=call, _a=args[1:], _k=kwargs: _c(t, *_a, **_k), args[0])
            elif node.target in ("add", "sub", "mul") and len(args) == 2 and not kwargs:
                res = _add(args[0], args[1], 1.0 if node.target == "add" else -1.0) if node.target != "mul" \
                    else _mul(args[0], args[1])
            env[node] = res if res is not None else _generic(call, args, kwargs)
    if not isinstance(out, _Jet):
        raise JetUnsupported("the network's output is not a single tensor depending on the input")
    d2 = out.d2 if out.d2 is not None else torch.zeros_like(out.d1)
    return out.p, out.d1, d2
