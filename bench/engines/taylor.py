"""Second-order directional derivatives of a network, for Hessian traces (``bench.metrics.fisher``).

For inputs x (B, ...) and directions v (M per point), the first and second derivatives of the
network's outputs along each v, d/dt f(x + t v) and d^2/dt^2 f(x + t v) at t = 0, in three ways:

- ``jet``: second-order Taylor mode through the network traced with torch.fx, each value
  carrying (value, first, second derivative) for every direction.  A linear layer (conv, linear,
  eval-mode batch norm, pooling, reshapes) maps both derivatives in one batched call; an
  elementwise activation (ReLU, leaky ReLU, SiLU, softplus, ELU, sigmoid, tanh) uses its
  closed-form derivatives (as autograd: 0 at a ReLU kink); any other op is differentiated exactly
  by a nested jvp of that op alone (the rules per op: ``bench.engines.taylor_rules``).  ``JetUnsupported``
  for a network that cannot be traced or is in training mode.
- ``forward_over_forward``: the same by a nested ``torch.func.jvp`` of the whole network,
  ``vmap``-ed over the directions.
- ``hvp_batched``: Hessian-vector products of a scalar function's gradient (reverse over reverse,
  ``is_grads_batched`` over the directions); v^T H v follows.
"""

from __future__ import annotations

import weakref

import torch
import torch.fx

from bench.core.energy import evaluates
from bench.engines import taylor_rules as rules
from bench.engines.taylor_rules import JetUnsupported


def forward_over_forward(model: torch.nn.Module, x: torch.Tensor,
                         vs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d/dt f(x + t v), d^2/dt^2 f(x + t v)) at t = 0 for every direction v, vs (M, B, ...) ->
    two (M, B, ...) tensors, detached: forward-over-forward (nested ``torch.func.jvp``, ``vmap`` over
    the directions) through the whole network."""
    from torch.func import functional_call, jvp, vmap

    rules.quiet_jvp_import()
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
# second-order Taylor mode ("jet") through the torch.fx graph of the network


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
                env[node] = rules.Jet(x, vs, None)
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

            if not any(isinstance(v, rules.Jet) for v in tree_flatten((args, kwargs))[0]):
                env[node] = call(*args, **kwargs)
                continue
            if (node.op == "call_method" and node.target in rules.META_METHODS) or \
                    (node.op == "call_function" and node.target in (getattr, len)):
                # shapes and the like: read off the value, no derivative
                env[node] = call(*torch.fx.node.map_aggregate(args, rules.value_of), **kwargs)
                continue
            res = None
            if node.op == "call_module":
                res = rules.module_rule(mod, args, kwargs)
            elif node.op == "call_function":
                res = rules.function_rule(call, args, kwargs)
            elif rules.activation_call(node.target, args, kwargs) is not None and isinstance(args[0], rules.Jet):
                j = args[0]
                res = rules.pointwise(j, *rules.activation(rules.activation_call(node.target, args, kwargs), j.p))
            elif node.target in rules.LINEAR_METHODS and isinstance(args[0], rules.Jet) and not any(
                    isinstance(a, rules.Jet) for a in (*args[1:], *kwargs.values())):
                res = rules.vmapped_linear(lambda t, _c=call, _a=args[1:], _k=kwargs: _c(t, *_a, **_k), args[0])
            elif node.target in ("add", "sub", "mul") and len(args) == 2 and not kwargs:
                res = rules.add(args[0], args[1], 1.0 if node.target == "add" else -1.0) if node.target != "mul" \
                    else rules.mul(args[0], args[1])
            env[node] = res if res is not None else rules.generic(call, args, kwargs)
    if not isinstance(out, rules.Jet):
        raise JetUnsupported("the network's output is not a single tensor depending on the input")
    d2 = out.d2 if out.d2 is not None else torch.zeros_like(out.d1)
    return out.p, out.d1, d2
