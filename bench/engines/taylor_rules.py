"""The propagation rules of second-order Taylor mode (``bench.engines.taylor.jet``): a ``Jet`` value (a
tensor with its first and second directional derivatives along every probe) and how each op of a
traced network maps it.

A linear layer (conv, linear, eval-mode batch norm, pooling, reshapes) maps both derivatives in one
batched call; an elementwise activation (ReLU, leaky ReLU, SiLU, softplus, ELU, sigmoid, tanh)
uses its closed-form derivatives (as autograd: 0 at a ReLU kink); sums, differences, products and
division by a constant follow the chain and product rules; any other op is differentiated
exactly by a nested jvp of that op alone (``generic``).
"""

from __future__ import annotations

import importlib
import operator
import warnings

import torch


def quiet_jvp_import() -> None:
    """torch's forward-mode decompositions announce, on their first import, that torch.jit.script
    is deprecated (a FutureWarning about torch's own code): import them once with that silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated", category=FutureWarning)
        try:
            importlib.import_module("torch._decomp.decompositions_for_jvp")
        except ImportError:
            pass


class JetUnsupported(RuntimeError):
    """The network cannot be run in Taylor mode (not traceable, training mode, values differ)."""


class Jet:
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
    def of(cls, p, both: torch.Tensor) -> Jet:
        m = len(both) // 2
        return cls(p, both[:m], both[m:], both)


def _batched(fn, t: torch.Tensor) -> torch.Tensor:
    """Apply a batch-wise op ``fn`` ((B, ...) -> (B, ...)) to derivatives (M, B, ...) at once."""
    m, b = t.shape[:2]
    out = fn(t.reshape(m * b, *t.shape[2:]))
    return out.reshape(m, b, *out.shape[1:])


def _linear(fn, j: Jet, primal_fn=None) -> Jet:
    """An op linear in its input (bias-free part ``fn``): derivatives pass through ``fn``; the value
    goes through ``primal_fn`` (the op with its bias) or ``fn``."""
    p = (primal_fn or fn)(j.p)
    if j.d2 is None:
        return Jet(p, _batched(fn, j.d1), None)
    return Jet.of(p, _batched(fn, j.stacked()))


def vmapped_linear(call, j: Jet) -> Jet:
    """An op linear in its input whose arguments may depend on the batch layout (view, flatten,
    pooling functions...): derivatives through ``vmap`` over the probes."""
    from torch.func import vmap

    p = call(j.p)
    if j.d2 is None:
        return Jet(p, vmap(call)(j.d1), None)
    return Jet.of(p, vmap(call)(j.stacked()))


def pointwise(j: Jet, y, d1, d2) -> Jet:
    """y = g(z) elementwise with g' = d1, g'' = d2 (d2 None: 0): chain rule to second order,
    y' = g' z', y'' = g' z'' + g'' z'^2."""
    if j.d2 is None and d2 is None:
        return Jet(y, d1 * j.d1, None)
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
    return Jet.of(y, both)


def activation(mod, z: torch.Tensor):
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


def add(a, b, sign: float) -> Jet:
    """a + sign * b with either (or both) a jet."""
    if isinstance(a, Jet) and isinstance(b, Jet):
        if a.both is not None and b.both is not None:
            return Jet.of(a.p + sign * b.p, torch.add(a.both, b.both, alpha=sign))
        d2 = (a.d2 if b.d2 is None else (sign * b.d2 if a.d2 is None else a.d2 + sign * b.d2))
        return Jet(a.p + sign * b.p, a.d1 + sign * b.d1, d2)
    if isinstance(a, Jet):
        return Jet(a.p + sign * b, a.d1, a.d2, a.both)
    if sign == 1.0:
        return Jet(a + b.p, b.d1, b.d2, b.both)
    return mul(Jet(b.p - a, b.d1, b.d2, b.both), -1.0)


def mul(a, b) -> Jet:
    if isinstance(a, Jet) and isinstance(b, Jet):  # product rule, to second order
        d2 = 2 * a.d1 * b.d1
        if a.d2 is not None:
            d2 = d2 + a.d2 * b.p
        if b.d2 is not None:
            d2 = d2 + a.p * b.d2
        return Jet(a.p * b.p, a.d1 * b.p + a.p * b.d1, d2)
    j, c = (a, b) if isinstance(a, Jet) else (b, a)
    if j.both is not None:
        return Jet.of(j.p * c, j.both * c)
    return Jet(j.p * c, j.d1 * c, None if j.d2 is None else j.d2 * c)


def generic(call, args, kwargs) -> Jet:
    """Any op, exactly: its first and second directional derivatives by (nested) jvp of the op
    alone, vmapped over the probes: y'' = J z'' + z'^T Hess(op) z'."""
    from torch.func import jvp, vmap
    from torch.utils._pytree import tree_flatten, tree_unflatten

    leaves, spec = tree_flatten((args, kwargs))
    idx = [i for i, v in enumerate(leaves) if isinstance(v, Jet)]

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

    quiet_jvp_import()
    with torch.enable_grad():
        y = g(*prim)
        y1, y2 = vmap(per)(d1s, d2s)
    if not isinstance(y, torch.Tensor):
        raise JetUnsupported(f"op {call} returns {type(y).__name__}, not a tensor")
    return Jet(y.detach(), y1.detach(), y2.detach())


# ops linear in their (first) tensor argument whose derivative is the op itself, via vmap
_LINEAR_FUNCTIONS = {torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze,
                     torch.unsqueeze, operator.getitem}
LINEAR_METHODS = {"flatten", "view", "reshape", "permute", "transpose", "contiguous", "squeeze", "unsqueeze",
                   "__getitem__"}


META_METHODS = {"size", "dim", "numel", "nelement", "stride", "is_contiguous", "get_device"}


def value_of(a):
    return a.p if isinstance(a, Jet) else a


def _linear_function(fn) -> bool:
    import torch.nn.functional as F

    return fn in _LINEAR_FUNCTIONS or fn in (F.adaptive_avg_pool2d, F.adaptive_avg_pool1d, F.avg_pool2d,
                                             F.avg_pool1d)


def module_rule(mod, args, kwargs):
    from torch import nn

    if kwargs or len(args) != 1 or not isinstance(args[0], Jet):
        return None
    j = args[0]
    act = activation(mod, j.p)
    if act is not None:
        return pointwise(j, *act)
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


def activation_call(fn, args, kwargs):
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


def function_rule(fn, args, kwargs):
    act = activation_call(fn, args, kwargs)
    if act is not None and isinstance(args[0], Jet):
        return pointwise(args[0], *activation(act, args[0].p))
    if fn in (operator.add, torch.add) and len(args) == 2 and not kwargs:
        return add(args[0], args[1], 1.0)
    if fn in (operator.sub, torch.sub) and len(args) == 2 and not kwargs:
        return add(args[0], args[1], -1.0)
    if fn in (operator.mul, torch.mul) and len(args) == 2 and not kwargs:
        return mul(args[0], args[1])
    if fn in (operator.truediv, torch.div) and len(args) == 2 and not kwargs and not isinstance(args[1], Jet):
        j, c = args
        if j.both is not None:
            return Jet.of(j.p / c, j.both / c)
        return Jet(j.p / c, j.d1 / c, None if j.d2 is None else j.d2 / c)
    if fn in (operator.neg, torch.neg) and len(args) == 1 and not kwargs:
        return mul(args[0], -1.0)
    if _linear_function(fn) and args and isinstance(args[0], Jet) and not any(
            isinstance(a, Jet) for a in (*args[1:], *kwargs.values())):
        return vmapped_linear(lambda t: fn(t, *args[1:], **kwargs), args[0])
    return None
