"""Defended inference and adaptive attacks (bench.engines.defense, bench.engines.attacks' EOT/BPDA, bench.runtime.sanity).

References are exact: a linear classifier's robust accuracy in an L-inf ball is known in closed
form (x robust iff margin(x) > eps * ||w||_1, away from the [0, 1] walls), and the full gradient
through K refinement steps is re-typed below as a plain unrolled computation without
checkpointing."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.core.energy import EnergyModel
from bench.engines.attacks import bpda_eot_pgd, eot_pgd, pgd
from bench.engines.defense import RefineConfig, RefinedModel, defended
from bench.runtime import sanity

D, EPS = 16, 0.1


def _points(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 0.3 + 0.4 * torch.rand(n, 1, 4, 4, generator=g)  # inside [0.3, 0.7]: no [0, 1] wall within eps
    w = torch.linspace(-1, 1, D).sign() * (0.5 + torch.rand(D, generator=g))
    b = (x.flatten(1) @ w).median()
    y = ((x.flatten(1) @ w - b) < 0).long()  # class 0 where the margin is positive
    return x, y, w, b


def _exact_robust(x, y, w, b, eps=EPS):
    m = (x.flatten(1) @ w - b) * (1 - 2 * y.double())  # signed margin, positive when correct
    return (m > eps * w.abs().sum()).double().mean().item()


class NoisyGradient(nn.Module):
    """A deliberately stochastic linear classifier: its logits carry a little noise (two passes
    differ) and its input gradient a large random term of value zero, fresh on every call, so one
    draw's gradient points nearly at random while the expected gradient is the true one."""

    def __init__(self, w, b, scale=10.0):
        super().__init__()
        self.w, self.b, self.scale = w, b, scale

    def forward(self, z):
        z = z.flatten(1)
        r = torch.randn_like(z) * self.w.abs()
        logit = z @ self.w - self.b + self.scale * (r * (z - z.detach())).sum(1) + 1e-4 * torch.randn(len(z))
        return torch.stack([logit, -logit], 1)


class Quantised(nn.Module):
    """A linear classifier behind a hard quantisation of its input (zero gradient almost
    everywhere); ``straight_through`` passes the gradient as if the rounding were the identity."""

    def __init__(self, w, b, levels=8):
        super().__init__()
        self.w, self.b, self.levels, self.straight_through = w, b, levels, False

    def forward(self, z):
        q = torch.round(z * self.levels) / self.levels
        if self.straight_through:
            q = z + (q - z).detach()
        logit = q.flatten(1) @ self.w - self.b
        return torch.stack([logit, -logit], 1)


class QuantisedModel(EnergyModel):
    def backward_mode(self, mode):  # BPDA: the quantisation as the identity in the backward pass
        from contextlib import contextmanager

        @contextmanager
        def ctx():
            self.net.straight_through = mode == "bpda"
            try:
                yield self
            finally:
                self.net.straight_through = False
        return ctx()


def _robust(model, x, y, adv):
    with torch.no_grad():
        return ((model.logits(x).argmax(1) == y) & (model.logits(adv).argmax(1) == y)).double().mean().item()


def test_plain_pgd_overestimates_a_stochastic_model_and_eot_closes_the_gap():
    torch.manual_seed(0)
    x, y, w, b = _points()
    model = EnergyModel(NoisyGradient(w, b, scale=5.0), 0.0, 1.0, (1, 4, 4), 2)
    eps = 0.02  # about half the points are robust
    exact = _exact_robust(x, y, w, b, eps)
    plain = _robust(model, x, y, pgd(model, x, y, eps, generator=torch.Generator().manual_seed(1)))
    eot = _robust(model, x, y, eot_pgd(model, x, y, eps, eot=100, generator=torch.Generator().manual_seed(1)))
    assert 0.3 < exact < 0.7
    assert plain > exact + 0.15  # one draw per gradient: far too optimistic
    assert eot == pytest.approx(exact, abs=0.01)  # the expectation's gradient: the true attack
    assert sanity.randomness_flag(model, x, None, "pgd20")["flag"] == "randomness_without_eot"
    assert sanity.randomness_flag(model, x, 200, "eot_pgd") is None
    deterministic = EnergyModel(Quantised(w, b), 0.0, 1.0, (1, 4, 4), 2)
    assert sanity.randomness_flag(deterministic, x, None, "pgd20") is None


def test_masked_gradients_flag_fires_and_bpda_recovers_the_attack():
    x, y, w, b = _points()
    model = QuantisedModel(Quantised(w, b), 0.0, 1.0, (1, 4, 4), 2)
    share = sanity.masked_share(model, x, y)
    assert share == 1.0  # rounding: zero gradient at every point
    assert sanity.gradient_flag(share, len(x), "pgd20")["flag"] == "masked_gradients"
    assert sanity.gradient_flag(sanity.masked_share(EnergyModel(NoisyGradient(w, b, 0.0), 0.0, 1.0), x, y),
                                len(x), "pgd20") is None
    with torch.no_grad():
        clean = (model.logits(x).argmax(1) == y).double().mean().item()
    plain = _robust(model, x, y, pgd(model, x, y, EPS, generator=torch.Generator().manual_seed(1)))
    bpda = _robust(model, x, y, bpda_eot_pgd(model, x, y, EPS, eot=1, generator=torch.Generator().manual_seed(1)))
    # the masked attack only moves from its random start; BPDA reaches the linear model's exact
    # robust accuracy (its sign steps land on the ball's corner, quantised within half a level)
    assert plain > clean - 0.25
    assert bpda <= _exact_robust(x, y, w, b, EPS - 0.5 / 8) + 1e-9 and bpda < plain - 0.3


def _tiny(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    return EnergyModel(net, 0.5, 0.5, (1, 4, 4), 3).double()


def _unrolled(model, x, cfg, noise):
    """K Langevin steps on E(x) = -logsumexp f(x), every step differentiable (create_graph), no
    checkpointing, then the mean of the chains' logits (re-typed from docs/CONVENTIONS.md, "SGLD")."""
    c = cfg.chains
    xs = x.repeat(c, 1, 1, 1)
    for t in range(cfg.steps):
        e = -torch.logsumexp(model.net((xs - 0.5) / 0.5), 1)
        (g,) = torch.autograd.grad(e.sum(), xs, create_graph=True)
        xs = (xs - 0.5 * cfg.step_size * g + cfg.noise * noise[t]).clamp(0, 1)
    return model.net((xs - 0.5) / 0.5).view(c, len(x), -1).mean(0)


@pytest.mark.parametrize("chains", [1, 2])
def test_full_gradient_through_k_steps_equals_the_unrolled_computation(chains):
    model = _tiny()
    cfg = RefineConfig(steps=6, chains=chains, step_size=0.5, noise=0.01)
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1])
    refined = RefinedModel(model, cfg, torch.Generator().manual_seed(3))
    xa = x.clone().requires_grad_(True)
    (g_ours,) = torch.autograd.grad(F.cross_entropy(refined.logits(xa), y, reduction="sum"), xa)
    noise = torch.randn((cfg.steps, chains * 5, 1, 4, 4), generator=torch.Generator().manual_seed(3),
                        dtype=torch.float64)
    xb = x.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(F.cross_entropy(_unrolled(model, xb, cfg, noise), y, reduction="sum"), xb)
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-6)
    # the second-order terms matter: BPDA's gradient (the identity backward) is another
    with refined.backward_mode("bpda"):
        refined.generator.manual_seed(3)
        xc = x.clone().requires_grad_(True)
        (g_bpda,) = torch.autograd.grad(F.cross_entropy(refined.logits(xc), y, reduction="sum"), xc)
    assert (g_bpda - g_ref).abs().max() > 1e-4


def test_refined_logits_are_random_and_none_is_the_plain_model():
    model = _tiny()
    x = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    assert defended(model, {"defense": "none"}) is model
    refined = defended(model, {"defense": "sgld-refine", "refine_steps": 3, "refine_chains": 2,
                               "refine_step_size": 0.5, "refine_noise": 0.05}, torch.Generator().manual_seed(0))
    a, b = refined.logits(x), refined.logits(x)
    assert a.shape == (4, 3) and not torch.equal(a, b)
    assert not sanity.determinism(refined, x)["deterministic"]


def test_adaptive_group_through_compute_on_the_defended_model(digits, tmp_path, monkeypatch):
    """The runner's path: compute.compute swaps the defended model in for a group that declares the
    defence, the adaptive group returns its settings' names, every robust point survives all R draws
    (so the worst case is at most every attack), and the flags are recorded and gathered."""
    from bench.core.settings import DEFAULTS
    from bench.metrics import Context, adaptive, load_all
    from bench.pipeline import compute
    from tests.conftest import tiny_model

    monkeypatch.setattr(adaptive, "_aa", lambda ctx: (lambda m, x, y, e, nm, generator=None: x))  # AA: its own tests
    s = dict(DEFAULTS, eps=0.1, pgd_step_size=0.025, pgd_steps=3, n_eval=12, n_aa=12, batch_size=12,
             model_sha256=None, defense="sgld-refine", refine_steps=2, refine_noise=0.05, eot=2, defense_repeats=2)
    g = load_all()["adaptive"].for_settings(s)
    assert set(g.metrics) == set(adaptive.ADAPTIVE)
    assert load_all()["adaptive"].for_settings(dict(s, defense="none", eot=None)).metrics == ()
    assert set(load_all()["adaptive"].for_settings(dict(s, defense="none")).metrics) == set(adaptive.ADAPTIVE) - {
        "bpda_eot", "aa_rand"}
    plain = tiny_model()
    ctx = Context(plain, digits, s, torch.device("cpu"), tmp_path)
    out, ok = compute.compute(g, ctx)
    assert ok and ctx.model is plain  # the group computed on a context of its own: the run's is unchanged
    worst = out["adaptive_worst"].value
    for m in ("pgd20_defended", "eot_pgd", "bpda_eot", "aa_rand"):
        assert worst <= out[m].value <= out["defended_accuracy"].value
    assert out["pgd20_defended"].details["threat_model"]["defense"]["refine_steps"] == 2
    assert [f["flag"] for f in out["pgd20_defended"].details["flags"]] == ["randomness_without_eot"]
    assert "flags" not in out["eot_pgd"].details  # EOT used: no randomness flag
    assert {f["metric"] for f in sanity.run_flags(out)} >= {"pgd20_defended"}
