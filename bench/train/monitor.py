"""The energy changes of the paper's Fig. 3 (Eq. 15) on a fixed monitoring batch.

    Delta_x E(x,y)     = E(x_adv, y) - E(x, y)              (the attack raises E(x,y))
    Delta_theta E(x,y) = E'(x_adv, y) - E(x_adv, y)         (the update lowers it)
    Delta_x E(x), Delta_theta E(x): the same with the marginal energy E(x)

E' is the model after one optimiser step on the batch.  The step runs on deep copies of the model,
optimiser and replay buffer with the monitor's own generator, so monitoring never changes the
training run (resume stays exact).
"""

from __future__ import annotations

import copy

import torch

from bench.train.methods import Method, TrainState


def _energies(model, x, y) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        f = model.logits(x)
    return -f.gather(1, y.view(-1, 1)).squeeze(1), -torch.logsumexp(f, 1)


def _stats(d: torch.Tensor) -> dict:
    d = d.double()
    return {"mean": float(d.mean()), "var": float(d.var(unbiased=False))}


def energy_changes(state: TrainState, method: Method, make_optimizer, optimizer_state: dict,
                   x: torch.Tensor, y: torch.Tensor, seed: int) -> dict:
    """Mean and variance of the four energy changes on (x, y); see the module docstring.
    ``make_optimizer(params)`` builds the run's optimiser, loaded with ``optimizer_state``."""
    gen = torch.Generator(device=x.device).manual_seed(int(seed))
    model = copy.deepcopy(state.model)
    opt = make_optimizer(model.parameters())
    opt.load_state_dict(copy.deepcopy(optimizer_state))
    buffer = copy.deepcopy(state.buffer)
    mon = TrainState(model, state.recipe, gen, buffer)
    model.eval()
    x_adv = method.inputs(mon, x, y)
    ej, em = _energies(model, x, y)
    ej_adv, em_adv = _energies(model, x_adv, y)
    model.train()
    opt.zero_grad(set_to_none=True)
    loss, _ = method.loss(mon, x_adv, x, y)
    loss.backward()
    opt.step()
    model.eval()
    ej_new, em_new = _energies(model, x_adv, y)
    return {"dx_joint": _stats(ej_adv - ej), "dtheta_joint": _stats(ej_new - ej_adv),
            "dx_marginal": _stats(em_adv - em), "dtheta_marginal": _stats(em_new - em_adv)}
