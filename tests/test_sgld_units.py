"""SGLD step and noise are in [0, 1] pixel space; JEM's numbers, quoted on (x - 0.5) / 0.5, are
converted once (bench.core.settings.sgld_from_normalised).  The reference is JEM's own update,
re-typed from its ``sample_q`` (train_wrn_ebm.py):

    f_prime = t.autograd.grad(f(x_k, y=y).sum(), [x_k], retain_graph=True)[0]
    x_k.data += args.sgld_lr * f_prime + args.sgld_std * t.randn_like(x_k)

where x_k lives in JEM's input space z = (x - 0.5) / 0.5 and f(x, y) is the logit of y
(f(x) the logsumexp of the logits when y is None)."""

import pytest
import torch
from torch import nn

from bench.core.energy import EnergyModel
from bench.core.settings import DEFAULTS, JEM_SGLD_NOISE, JEM_SGLD_STEP_SIZE, sgld_from_normalised
from bench.engines.sampling import SGLDConfig, sgld
from bench.train.recipe import Recipe, load_recipe


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


def _jem_step(net, z, y, lr, std, noise):
    """JEM's sample_q, one step, on its own input z (re-typed; see the module docstring)."""
    z = z.clone().requires_grad_(True)
    logits = net(z)
    f = logits.logsumexp(1) if y is None else logits.gather(1, y.view(-1, 1)).squeeze(1)
    (f_prime,) = torch.autograd.grad(f.sum(), [z])
    return (z + lr * f_prime + std * noise).detach()


@pytest.mark.parametrize("energy", ["joint", "marginal"])
def test_one_bench_step_is_jems_update(energy):
    net = _net()
    model = EnergyModel(net, mean=0.5, std=0.5, input_shape=(1, 6, 6), num_classes=5)
    x0 = 0.25 + 0.5 * torch.rand(8, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    y = torch.arange(8) % 5
    cfg = SGLDConfig(steps=1, energy=energy, clamp=False)  # the defaults: JEM's numbers, converted
    x1, ok = sgld(model, x0, y, cfg, torch.Generator().manual_seed(7))
    assert ok.all()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7))  # the same draw
    z1 = _jem_step(net, (x0 - 0.5) / 0.5, None if energy == "marginal" else y, 1.0, 0.01, noise)
    torch.testing.assert_close(x1, 0.5 + 0.5 * z1, rtol=0, atol=1e-6)
    # and the step really moved the chain beyond the tolerance (else the check above proves nothing)
    assert (x1 - x0).abs().max() > 1e-3


def test_conversion_numbers():
    assert sgld_from_normalised(1.0, 0.01, 0.5) == pytest.approx((0.5, 0.005))
    assert (JEM_SGLD_STEP_SIZE, JEM_SGLD_NOISE) == pytest.approx((0.5, 0.005))
    # a model on raw pixels (s = 1) keeps the numbers, doubled lr -> step as in Eq. 10's alpha / 2
    assert sgld_from_normalised(1.0, 0.01, 1.0) == pytest.approx((2.0, 0.01))


def test_defaults_use_jems_pixel_numbers():
    assert (DEFAULTS["gen_step_size"], DEFAULTS["gen_noise"]) == pytest.approx((0.5, 0.005))
    r = Recipe(name="x", method="jem")
    assert (r.sgld_step_size, r.sgld_noise) == pytest.approx((0.5, 0.005))
    for name in ("digits-jem", "digits-jeat", "cifar10-jem", "cifar10-jeat", "cifar100-jem", "cifar100-jeat"):
        rec = load_recipe(name)
        assert (rec.sgld_step_size, rec.sgld_noise) == pytest.approx((0.5, 0.005)), name
        assert rec.mean == [0.5] * len(rec.mean) and rec.std == [0.5] * len(rec.std), name
