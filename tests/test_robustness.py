import json
import logging
import math

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from pyautoattack import AutoAttack
from torch import nn

from bench.core.energy import EnergyModel
from bench.core.settings import DEFAULTS
from bench.engines import aa_adapter, aa_eval, defense, robust_flags
from bench.engines.attacks import check_in_ball, pgd, pgd_restarts
from bench.metrics import Context, load_all
from bench.runtime.execution import Execution
from tests.conftest import tiny_model, trained_model

EPS = 0.1


pytestmark = pytest.mark.usefixtures("one_thread")




def make_ctx(model, ds, tmp_path, **settings):
    s = dict(DEFAULTS, eps=EPS, pgd_step_size=EPS / 4, n_eval=120, batch_size=50, model_sha256=None)
    s.update(settings)
    return Context(model, ds, s, torch.device("cpu"), tmp_path)


# ---------------------------------------------------------------------------------------------
# PGD against torchattacks


def test_pgd_equals_torchattacks_from_the_clean_point(digits):
    m = trained_model()
    x, y = digits.test.x[:64], digits.test.y[:64]
    theirs = torchattacks.PGD(m, eps=EPS, alpha=EPS / 4, steps=20, random_start=False)(x, y)
    ours = pgd(m, x, y, EPS, steps=20, step_size=EPS / 4, loss="ce", random_start=False)
    assert torch.equal(ours, theirs)
    assert (ours != x).any()  # the attack moved


def test_pgd_equals_torchattacks_from_the_same_random_start(digits):
    m = trained_model()
    x, y = digits.test.x[:50], digits.test.y[:50]
    torch.manual_seed(11)
    theirs = torchattacks.PGD(m, eps=EPS, alpha=EPS / 4, steps=20, random_start=True)(x, y)
    torch.manual_seed(11)  # torchattacks' start, drawn the way torchattacks draws it
    start = torch.clamp(x + torch.empty_like(x).uniform_(-EPS, EPS), min=0, max=1)
    ours = pgd(m, x, y, EPS, steps=20, step_size=EPS / 4, loss="ce", x_start=start)
    assert torch.equal(ours, theirs)


def test_random_start_is_distributed_as_torchattacks_start(digits):
    """Our uniform start against torchattacks' (PGD with 0 steps returns its clamped random start),
    statistically: both perturbations U(-eps, eps) (KS against each other and against the uniform
    law, mean 0, variance eps^2 / 3) inside [0, 1], and both clamped the same way at the edges."""
    from scipy import stats

    from bench.engines.attacks import uniform_start

    m = tiny_model()
    n = 200
    y = torch.zeros(n, dtype=torch.long)
    mid = torch.full((n, 1, 8, 8), 0.5)
    torch.manual_seed(5)
    theirs = torchattacks.PGD(m, eps=EPS, alpha=EPS / 4, steps=0, random_start=True)(mid, y) - mid
    ours = uniform_start(mid, EPS, torch.Generator().manual_seed(6)) - mid
    a, b = ours.flatten().double().numpy(), theirs.flatten().double().numpy()
    assert stats.ks_2samp(a, b).pvalue > 1e-3
    assert stats.kstest(a, "uniform", args=(-EPS, 2 * EPS)).pvalue > 1e-3
    assert abs(a.mean()) < 4 * EPS / math.sqrt(3 * a.size)
    assert a.var() == pytest.approx(EPS**2 / 3, rel=0.03)
    assert a.min() >= -EPS and a.max() <= EPS
    # at the edges of [0, 1] both clip: about half of the start sits on the edge
    edge = torch.cat([torch.zeros(n // 2, 1, 8, 8), torch.ones(n // 2, 1, 8, 8)])
    torch.manual_seed(7)
    t_edge = torchattacks.PGD(m, eps=EPS, alpha=EPS / 4, steps=0, random_start=True)(edge, y)
    o_edge = uniform_start(edge, EPS, torch.Generator().manual_seed(8))
    for start in (t_edge, o_edge):
        on_edge = (start == edge).double().mean().item()
        assert on_edge == pytest.approx(0.5, abs=0.02) and start.min() >= 0 and start.max() <= 1
    assert stats.ks_2samp((o_edge - edge).abs().flatten().numpy(),
                          (t_edge - edge).abs().flatten().numpy()).pvalue > 1e-3


def retyped_pgd(model, x, y, eps, step, steps, loss, start):
    """L-inf PGD typed out here (as torchattacks.PGD) from ``start``, ascending the summed
    cross-entropy or the joint energy -f_y."""
    adv = start.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        f = model.logits(adv)
        f_y = f.gather(1, y[:, None]).squeeze(1)
        obj = (torch.logsumexp(f, 1) - f_y).sum() if loss == "ce" else (-f_y).sum()
        (g,) = torch.autograd.grad(obj, adv)
        adv = adv.detach() + step * g.sign()
        adv = (x + (adv - x).clamp(-eps, eps)).clamp(0, 1)
    return adv.detach()


@pytest.mark.parametrize("loss", ["ce", "energy"])
def test_attacks_stay_in_the_ball_and_in_range(digits, loss):
    m = trained_model()
    x, y = digits.test.x[:100], digits.test.y[:100]
    g = torch.Generator().manual_seed(0)
    adv = pgd_restarts(m, x, y, EPS, steps=20, loss=loss, restarts=2, generator=g)
    check_in_ball(x, adv, EPS)
    assert (adv - x).abs().max().item() <= EPS + 1e-6
    assert adv.min().item() >= 0 and adv.max().item() <= 1
    with torch.no_grad():
        clean_acc = (m.logits(x).argmax(1) == y).float().mean().item()
        adv_acc = (m.logits(adv).argmax(1) == y).float().mean().item()
        e_clean, e_adv = m.energy_joint(x, y), m.energy_joint(adv, y)
    assert adv_acc < clean_acc - 0.1  # both attacks do damage at eps 0.1 (Table 1)
    if loss == "energy":
        assert (e_adv > e_clean).float().mean().item() > 0.95  # Eq. 18 raises E(x, y)


def test_check_in_norm_ball_refuses_outside_examples():
    x = torch.full((2, 1, 2, 2), 0.5)
    robust_flags.check_in_norm_ball(x, x + 0.1, 0.1)
    with pytest.raises(robust_flags.RobustnessCheckError):
        robust_flags.check_in_norm_ball(x, x + 0.11, 0.1)
    with pytest.raises(robust_flags.RobustnessCheckError):
        robust_flags.check_in_norm_ball(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2) + 0.05, 0.1)  # leaves [0, 1]
    assert robust_flags.check_in_norm_ball(x, x + 0.05, 0.1, "L2") == pytest.approx(0.1)  # 4 pixels * 0.05 -> 0.1
    with pytest.raises(robust_flags.RobustnessCheckError):
        robust_flags.check_in_norm_ball(x, x + 0.06, 0.1, "L2")


# ---------------------------------------------------------------------------------------------
# metric groups


def test_robust_groups_on_a_trained_model(digits, tmp_path):
    groups = load_all()
    assert groups["accuracy"].settings == ("n_eval", *defense.SETTINGS)  # defended inference keys it too
    for name in ("pgd20", "pgd20_energy"):
        assert {"eps", "pgd_steps", "pgd_step_size", "pgd_restarts", "seed"} <= set(groups[name].settings)
    ctx = make_ctx(trained_model(), digits, tmp_path)
    acc = groups["accuracy"].fn(ctx)["accuracy"]
    p = acc.value
    assert acc.n == 120 and 0.85 < p <= 1
    assert acc.std == pytest.approx(math.sqrt(p * (1 - p) / 120))
    for name, loss in (("pgd20", "ce"), ("pgd20_energy", "energy")):
        r = groups[name].fn(ctx)[name]
        tm = r.details["threat_model"]
        assert tm == {**tm, "norm": "Linf", "eps": EPS, "steps": 20, "step_size": EPS / 4, "restarts": 1,
                      "random_start": True, "loss": loss}
        assert r.n == 120 and r.details["clean_correct"] == round(p * 120)
        assert r.value < p - 0.1 and r.value == r.details["robust_correct"] / 120
        assert r.std == pytest.approx(math.sqrt(r.value * (1 - r.value) / 120))
        assert r.details["max_linf"] <= EPS + 1e-6
        assert groups[name].fn(ctx)[name].value == r.value  # seeded from ctx.generator
        json.dumps(r.to_json())
        # the robust count, recomputed: per batch of 50 its own stream "<name>/batch<i>", a uniform
        # start x + (2u - 1) eps for the clean-correct points, re-typed steps on the loss (2 steps:
        # there the start decides many points, so a missing random start shows)
        short = groups[name].fn(make_ctx(ctx.model, digits, tmp_path, pgd_steps=2))[name]
        robust = {"random": 0, "clean start": 0}
        for i in range(3):
            x, y = digits.test.x[50 * i:min(50 * (i + 1), 120)], digits.test.y[50 * i:min(50 * (i + 1), 120)]
            with torch.no_grad():
                ok = ctx.model.logits(x).argmax(1) == y
            x, y = x[ok], y[ok]
            u = torch.rand(x.shape, generator=ctx.generator(f"{name}/batch{i}"))
            for how, start in (("random", (x + (2 * u - 1) * EPS).clamp(0, 1)), ("clean start", x)):
                adv = retyped_pgd(ctx.model, x, y, EPS, EPS / 4, 2, loss, start)
                with torch.no_grad():
                    robust[how] += int((ctx.model.logits(adv).argmax(1) == y).sum())
        assert short.details["robust_correct"] == robust["random"]
        assert abs(robust["clean start"] - robust["random"]) >= 3  # the start decides points here


def test_eps_zero_gives_clean_accuracy(digits, tmp_path):
    ctx = make_ctx(trained_model(), digits, tmp_path, eps=0.0, pgd_step_size=0.0, n_eval=60)
    groups = load_all()
    assert groups["pgd20"].fn(ctx)["pgd20"].value == groups["accuracy"].fn(ctx)["accuracy"].value


def test_other_norms_are_refused_with_a_reason(digits, tmp_path):
    r = load_all()["pgd20"].fn(make_ctx(trained_model(), digits, tmp_path, norm="L1"))["pgd20"]
    assert r.value is None and "L1" in r.reason


# ---------------------------------------------------------------------------------------------
# robust <= clean, checked


def test_robust_le_clean_check_fires_on_a_doctored_case():
    robust_flags.check_robust_le_clean(torch.tensor([True, True, False]), torch.tensor([True, False, False]))
    with pytest.raises(robust_flags.RobustnessCheckError, match="exceeds clean accuracy"):
        # robust accuracy 2/3 > clean accuracy 1/3
        robust_flags.check_robust_le_clean(torch.tensor([True, False, False]), torch.tensor([True, True, False]))
    with pytest.raises(robust_flags.RobustnessCheckError):
        # same totals, but point 1 is robust while wrong clean
        robust_flags.check_robust_le_clean(torch.tensor([True, False]), torch.tensor([False, True]))


class _RightAfterFirstCall(nn.Module):
    """Doctored net: the real predictions on its first call, the true labels on every later one,
    so the attacked points look 'more correct' than the clean ones."""

    def __init__(self, net, labels):
        super().__init__()
        self.net, self.labels, self.calls = net, labels, 0

    def forward(self, z):
        self.calls += 1
        out = self.net(z)
        if self.calls == 1:
            return out
        return out * 0 + 50 * F.one_hot(self.labels[: len(z)], out.shape[1]).float()


def test_pgd_group_raises_when_robust_exceeds_clean(digits, tmp_path):
    real = trained_model()
    y = digits.test.y[:120]
    doctored = EnergyModel(_RightAfterFirstCall(real.net, y), 0.5, 0.5, (1, 8, 8), 10).eval()
    ctx = make_ctx(doctored, digits, tmp_path, batch_size=120)
    with pytest.raises(robust_flags.RobustnessCheckError, match="exceeds clean accuracy"):
        load_all()["pgd20"].fn(ctx)


# ---------------------------------------------------------------------------------------------
# AutoAttack through pyautoattack


def test_autoattack_wrapper_equals_pyautoattack_direct(digits, tmp_path):
    m = trained_model()
    x, y = digits.test.x[:24], digits.test.y[:24]
    kw = {"norm": "Linf", "eps": 0.05, "seed": 3}
    direct = AutoAttack(m, version="custom", attacks=["apgd-ce", "apgd-dlr"], device="cpu", **kw)
    x_ref, y_ref = direct.run_standard_evaluation(x, y, batch_size=250)
    out = aa_adapter.run_autoattack(m, x, y, version="custom", attacks=["apgd-ce", "apgd-dlr"],
                                    batch_size=250, device="cpu", state_path=tmp_path / "aa.json", **kw)
    assert torch.equal(out.x_adv, x_ref) and torch.equal(out.y_adv, y_ref)
    assert torch.equal(out.robust, y_ref == y)
    assert 0 < out.robust.sum() < (y_ref == y).numel()  # some points fooled, some not
    assert not list(tmp_path.glob("aa*.json"))  # finished: the state is gone
    aa = aa_adapter.AAConfig(version="custom", attacks=["apgd-ce", "apgd-dlr"], **kw)
    # (evaluate_autoattack is autoattack_flags(...)[0]: test_autoattack_runs_in_blocks_... checks it
    # against pyautoattack itself)
    res, _ = aa_eval.autoattack_flags(m, x, y, aa, Execution("cpu", 250), state_dir=tmp_path, model_id="m")
    with torch.no_grad():
        assert res.value == (m.logits(x_ref).argmax(1) == y).double().mean().item()
    assert res.details["recomputed_disagreements"] == 0 and res.details["warnings"] == []


@pytest.mark.slow
def test_autoattack_standard_equals_pyautoattack_direct(digits):
    # two points: the first falls to APGD-CE, the second survives all four standard attacks, so
    # APGD-T, FAB-T and Square all run (about 5 s each way on this CPU)
    m = trained_model()
    x, y = digits.test.x[[4, 0]], digits.test.y[[4, 0]]
    kw = {"norm": "Linf", "eps": 0.08, "seed": 0}
    x_ref, y_ref = AutoAttack(m, version="standard", device="cpu", **kw).run_standard_evaluation(x, y)
    out = aa_adapter.run_autoattack(m, x, y, version="standard", **kw)
    assert out.attacks == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert torch.equal(out.x_adv, x_ref) and torch.equal(out.y_adv, y_ref)
    assert out.robust.tolist() == [False, True]


def test_autoattack_group_records_threat_model_and_keys_its_state(digits, tmp_path, monkeypatch):
    m = trained_model()
    # the state is keyed by the weights as loaded (weights_sha256), not by the file (model_sha256)
    ctx = make_ctx(m, digits, tmp_path, n_eval=40, n_aa=16, seed=1, model_sha256="the-file", weights_sha256="abc")
    seen = []
    real = aa_eval.run_autoattack

    def spy(*a, **kw):  # the group's call, with 'standard' shortened to APGD-CE for speed
        seen.append(dict(kw))
        return real(*a, **{**kw, "version": "custom", "attacks": ["apgd-ce"]})

    monkeypatch.setattr(aa_eval, "run_autoattack", spy)
    r = load_all()["autoattack"].fn(ctx)["autoattack"]
    assert seen[0]["version"] == "standard" and seen[0]["eps"] == EPS and seen[0]["seed"] == 1
    assert r.n == 16 and r.value <= r.details["clean_accuracy"]
    assert r.details["threat_model"] == {"norm": "Linf", "eps": EPS, "version": "standard",
                                         "attacks": ["apgd-ce"], "seed": 1, "batch_size": 50}
    assert r.details["warnings"] == [] and r.std == pytest.approx(math.sqrt(r.value * (1 - r.value) / 16))
    state = seen[0]["state_path"]
    assert state.parent == tmp_path / "cache" / "autoattack-state" and not state.exists()
    x16, y16 = digits.test.x[:16], digits.test.y[:16]

    def key(model_id="abc", batch_size=50, y=y16, **kw):
        aa = aa_adapter.AAConfig(**{"eps": EPS, "norm": "Linf", "version": "standard", "seed": 1, **kw})
        return aa_adapter.autoattack_key(model_id, x16, y, aa, batch_size, aa_adapter.normalisation(m))

    assert state.name == f"state-{key()}.json"
    keys = {key(), key(eps=0.05), key(seed=2), key(norm="L2"), key(version="plus"), key(batch_size=64),
            key(model_id="abd"), key(y=digits.test.y[1:17])}
    assert len(keys) == 8
    # without a checkpoint sha256 the key falls back to a digest of the weights
    import copy

    twin = copy.deepcopy(m)  # another object, the same weights: the same digest
    digest = aa_adapter.model_digest
    assert digest(twin) == digest(m) != digest(tiny_model(seed=1))
    with torch.no_grad():
        next(twin.parameters()).view(-1)[0] += 1e-6  # one weight moved
    assert aa_adapter.model_digest(twin) != aa_adapter.model_digest(m)
    twin = copy.deepcopy(m)
    twin.std.fill_(0.25)  # the normalisation is part of the model
    assert aa_adapter.model_digest(twin) != aa_adapter.model_digest(m)
    for bad in ({"aa_version": "custom"}, {"norm": "Linf2"}):
        r = load_all()["autoattack"].fn(make_ctx(m, digits, tmp_path, n_aa=4, **bad))["autoattack"]
        assert r.value is None and r.reason


def test_autoattack_resumes_from_an_interrupted_state(digits, tmp_path):
    m = trained_model()
    x, y = digits.test.x[:30], digits.test.y[:30]
    kw = {"norm": "Linf", "eps": 0.05, "seed": 0, "version": "custom", "attacks": ["apgd-ce", "apgd-dlr"]}
    state = tmp_path / "aa.json"
    # interrupt pyautoattack during its second attack: the state file then holds the flags after APGD-CE
    aa = AutoAttack(m, device="cpu", **kw)
    perturb = aa.apgd.perturb

    def interrupted(*a, **k):
        if aa.apgd.loss == "dlr":
            raise KeyboardInterrupt
        return perturb(*a, **k)

    aa.apgd.perturb = interrupted
    with pytest.raises(KeyboardInterrupt):
        aa.run_standard_evaluation(x, y, batch_size=250, state_path=state)
    left = json.loads(state.read_text())
    after_ce = torch.tensor(left["_robust_flags"])
    assert 0 < after_ce.sum() < len(y)
    out = aa_adapter.run_autoattack(m, x, y, batch_size=250, state_path=state, **kw)
    assert out.resumed["levels_read"] == 1 and out.resumed["not_robust_before"] == int((~after_ce).sum())
    assert not (out.robust & ~after_ce).any()  # points fooled before stay fooled
    full = aa_adapter.run_autoattack(m, x, y, batch_size=250, **kw)  # uninterrupted, for comparison
    assert out.robust.sum() <= after_ce.sum() and abs(int(out.robust.sum()) - int(full.robust.sum())) <= 2
    assert not list(tmp_path.glob("aa*.json"))
    # a half-written state is not trusted
    state.write_text('{"_robust_flags": [true, fal')
    again = aa_adapter.run_autoattack(m, x, y, batch_size=250, state_path=state, **kw)
    assert again.resumed == {} and torch.equal(again.x_adv, full.x_adv)


def test_autoattack_warnings_are_recorded_and_randomness_is_an_error(digits, tmp_path):
    torch.manual_seed(0)

    class Randomised(nn.Module):  # noise on the logits in eval mode too: a randomised defence
        def forward(self, h):
            return h + torch.randn_like(h)

    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10), Randomised())
    noisy = EnergyModel(net, 0.5, 0.5, (1, 8, 8), 10).eval()
    x, y = digits.test.x[:40], digits.test.y[:40]
    logger = logging.getLogger(aa_adapter.AA_LOGGER)
    handlers = list(logger.handlers)
    with pytest.raises(robust_flags.RobustnessCheckError) as err:
        aa_eval.evaluate_autoattack(noisy, x, y, eps=0.1, version="custom", attacks=["apgd-ce"], batch_size=40,
                                device="cpu")
    assert "not deterministic" in str(err.value)
    assert logger.handlers == handlers  # capture handler removed again
    out = aa_adapter.run_autoattack(noisy, x, y, eps=0.1, version="custom", attacks=["apgd-ce"], batch_size=40)
    assert any("randomized defense" in w for w in out.warnings)


def test_autoattack_leaves_the_global_rng_alone(digits):
    m = trained_model()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    aa_adapter.run_autoattack(m, digits.test.x[:8], digits.test.y[:8], eps=0.05, version="custom",
                              attacks=["apgd-ce"])
    assert torch.equal(torch.rand(3), expected)


def test_autoattack_runs_in_blocks_and_an_interrupted_run_keeps_finished_blocks(digits, tmp_path):
    """Blocks of batch_size points, one pyautoattack call each (the layout torchrun ranks share):
    equal to calling pyautoattack on each block; after an interruption the finished blocks come
    from their state files and the value equals an uninterrupted run's."""
    m = trained_model()
    x, y = digits.test.x[:30], digits.test.y[:30]
    kw = {"norm": "Linf", "eps": 0.05, "seed": 0, "version": "custom", "attacks": ["apgd-ce"]}
    res = aa_eval.evaluate_autoattack(m, x, y, batch_size=12, device="cpu", state_dir=tmp_path, model_id="m", **kw)
    direct = torch.cat([AutoAttack(m, device="cpu", **kw).run_standard_evaluation(x[i:i + 12], y[i:i + 12],
                                                                                  batch_size=12)[1] == y[i:i + 12]
                        for i in (0, 12, 24)])
    assert res.n == 30 and res.details["robust_correct"] == int(direct.sum())
    assert res.details["blocks"] == "3 pyautoattack calls of up to 12 points"
    assert not list(tmp_path.glob("state-*"))

    def interrupt_third(it, desc, total):
        for k, b in enumerate(it):
            if k == 2:
                raise KeyboardInterrupt
            yield b

    with pytest.raises(KeyboardInterrupt):
        aa_eval.autoattack_flags(m, x, y, aa_adapter.AAConfig(**kw), Execution("cpu", 12, progress=interrupt_third),
                             state_dir=tmp_path, model_id="m")
    assert len(list(tmp_path.glob("state-*.json"))) == 2  # the two finished blocks
    again = aa_eval.evaluate_autoattack(m, x, y, batch_size=12, device="cpu", state_dir=tmp_path, model_id="m", **kw)
    assert again.value == res.value and len(again.details["resumed"]) == 2
    assert all(r["run_now"] == [] for r in again.details["resumed"])
    assert not list(tmp_path.glob("state-*"))
