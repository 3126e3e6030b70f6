import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.functional import hessian

from bench.core.energy import EnergyModel
from bench.core.errors import BenchError
from bench.core.settings import DEFAULTS, validate
from bench.engines import fisher_terms as terms_engine
from bench.engines.fisher_terms import fisher_scores, fisher_terms, rademacher
from bench.engines.taylor import JetUnsupported, jet
from bench.metrics import Context, fisher, load_all
from bench.runtime.execution import Execution
from tests.conftest import tiny_model


def _points(digits, n=12):
    return digits.test.x[:n], digits.test.y[:n]


def test_rademacher_signs():
    r = rademacher((4000,), torch.Generator().manual_seed(0))
    assert r.dtype == torch.int8 and set(r.unique().tolist()) == {-1, 1}
    assert abs(r.float().mean().item()) < 0.05


def test_hutchinson_within_5_percent_of_exact_trace(digits):
    m = tiny_model(act="softplus", width=8).requires_grad_(False)
    x, y = _points(digits, 10)
    exact = fisher_scores(m, x, y, exact=True)
    hutch = fisher_scores(m, x, y, probes=400, generator=torch.Generator().manual_seed(0))
    for kind in ("joint", "marginal"):
        t_ex, t_hu = exact[kind]["trace"], hutch[kind]["trace"]
        assert t_ex.abs().mean() > 1e-4  # a smooth net has curvature
        assert t_hu.mean().item() == pytest.approx(t_ex.mean().item(), rel=0.05)
        # per point too, on the scale of the traces (joint traces change sign across points)
        assert (t_hu - t_ex).abs().max() < 0.05 * t_ex.abs().max()
        # the gradient term does not depend on the trace method
        torch.testing.assert_close(hutch[kind]["grad"], exact[kind]["grad"])
        # the probes' own standard error is small and honest: the error lies within 4 of them
        se = hutch[kind]["trace_probe_var"].sqrt()
        assert ((t_hu - t_ex).abs() <= 4 * se + 1e-7).all()


@pytest.mark.parametrize("method", ["jet", "forward", "reverse"])
def test_relu_joint_trace_is_exactly_zero(digits, method, one_thread):
    m = tiny_model(act="relu", width=8).requires_grad_(False)
    x, y = _points(digits, 4)  # exact traces: 64 Hessian-vector products a point (reverse: 34 s CPU on 12)
    for kw in ({"exact": True}, {"probes": 8, "generator": torch.Generator().manual_seed(1)}):
        t = fisher_scores(m, x, y, method=method, **kw)
        assert torch.equal(t["joint"]["trace"], torch.zeros(len(x)))
        assert (t["marginal"]["trace"] != 0).any()  # logsumexp keeps its curvature
        torch.testing.assert_close(t["joint"]["score"], t["joint"]["grad"])


@pytest.mark.parametrize("method", ["jet", "forward", "reverse"])
def test_exact_trace_equals_autograd_hessian(digits, method):
    m = tiny_model(act="silu", width=8).requires_grad_(False)
    x, y = digits.test.x[:1], digits.test.y[:1]
    info = {}
    t = fisher_terms(m, x, y, exact=True, chunk=24, method=method, info=info)  # chunks not dividing D = 64
    assert info["method"] == method
    hj = hessian(lambda v: m.energy_joint(v.view(1, 1, 8, 8), y).sum(), x.flatten())
    hm = hessian(lambda v: m.energy_marginal(v.view(1, 1, 8, 8)).sum(), x.flatten())
    assert t["joint"]["trace"].item() == pytest.approx(hj.trace().item(), rel=1e-5, abs=1e-8)
    assert t["marginal"]["trace"].item() == pytest.approx(hm.trace().item(), rel=1e-5, abs=1e-8)
    _, g = m.grad_energy(x, y, "joint")
    assert t["joint"]["grad"].item() == pytest.approx(0.5 * g.pow(2).sum().item(), rel=1e-6)
    _, g = m.grad_energy(x, None, "marginal")
    assert t["marginal"]["grad"].item() == pytest.approx(0.5 * g.pow(2).sum().item(), rel=1e-6)


def test_derivatives_are_taken_on_the_unit_range_input(digits):
    """E is a function of the [0, 1] image through the normalisation: with std 0.5 the input
    gradient is twice, and the Hessian four times, that of the network on normalised inputs."""
    m = tiny_model(act="silu", width=8).requires_grad_(False)
    x, y = digits.test.x[:3], digits.test.y[:3]
    t = fisher_terms(m, x, y, exact=True)
    z = ((x - 0.5) / 0.5).requires_grad_(True)
    plain = tiny_model(act="silu", width=8).requires_grad_(False)
    plain.mean.zero_()
    plain.std.fill_(1.0)
    t_net = fisher_terms(plain, z.detach(), y, exact=True)
    torch.testing.assert_close(t["joint"]["grad"], 4 * t_net["joint"]["grad"], rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(t["joint"]["trace"], 4 * t_net["joint"]["trace"], rtol=1e-4, atol=1e-9)


def test_methods_agree_and_auto_falls_back(digits, monkeypatch):
    m = tiny_model(act="softplus", width=8).requires_grad_(False)
    x, y = _points(digits, 9)
    probes = rademacher((9, 5, 1, 8, 8), torch.Generator().manual_seed(2))
    info = {}
    auto = fisher_terms(m, x, y, probes, info=info)
    assert info["method"] == "jet"
    rev = fisher_terms(m, x, y, probes, method="reverse", chunk=2)
    for method in ("jet", "forward"):
        other = fisher_terms(m, x, y, probes, method=method)
        for kind in ("joint", "marginal"):
            for name in ("grad", "trace", "trace_probe_var", "score"):
                torch.testing.assert_close(other[kind][name], rev[kind][name], rtol=1e-4, atol=1e-9)
                torch.testing.assert_close(auto[kind][name], other[kind][name], rtol=1e-4, atol=1e-9)

    def unsupported(*a, **k):
        raise NotImplementedError("no forward-mode rule")

    monkeypatch.setattr(terms_engine, "_quad_jet", unsupported)
    fisher_terms(m, x, y, probes, info=info)
    assert info["method"] == "forward"
    monkeypatch.setattr(terms_engine, "_quad_forward", unsupported)
    fallback = fisher_terms(m, x, y, probes, info=info)
    assert info["method"] == "reverse"
    torch.testing.assert_close(fallback["joint"]["trace"], rev["joint"]["trace"])
    with pytest.raises(NotImplementedError):
        fisher_terms(m, x, y, probes, method="forward")


def test_estimates_do_not_depend_on_batch_size(digits):
    m = tiny_model(act="softplus", width=4).requires_grad_(False)
    x, y = _points(digits, 13)
    a = fisher_scores(m, x, y, probes=6, generator=torch.Generator().manual_seed(3), run=Execution(batch_size=13))
    b = fisher_scores(m, x, y, probes=6, generator=torch.Generator().manual_seed(3), run=Execution(batch_size=5), chunk=4)
    for kind in ("joint", "marginal"):
        torch.testing.assert_close(a[kind]["score"], b[kind]["score"], rtol=1e-5, atol=1e-8)


def test_bad_probe_shape_is_refused(digits):
    m = tiny_model()
    x, y = _points(digits, 4)
    with pytest.raises(ValueError, match="probes"):
        fisher_terms(m, x, y, torch.ones(4, 3, 1, 4, 4))
    with pytest.raises(ValueError, match="probes"):
        fisher_terms(m, x, y, None)


def _by_hessian(model, x, y, kind: str) -> tuple[float, float]:
    """(mean 0.5 ||grad_x E||^2, mean tr Hess_x E) over the points, E joint -f(x)[y] or marginal
    -logsumexp f(x), in pixel space, from autograd's full Hessian of each point (float64)."""
    grads, traces = [], []
    for xi, yi in zip(x, y, strict=True):
        def energy(v, yi=yi, shape=xi.shape):
            f = model.logits(v.view(1, *shape).float())[0].double()
            return -f[yi] if kind == "joint" else -torch.logsumexp(f, 0)
        v = xi.flatten().double().requires_grad_(True)
        (g,) = torch.autograd.grad(energy(v), v)
        h = torch.autograd.functional.hessian(energy, xi.flatten().double())
        grads.append(0.5 * g.pow(2).sum().item())
        traces.append(torch.diagonal(h).sum().item())
    return sum(grads) / len(grads), sum(traces) / len(traces)


def test_fisher_group_through_context(digits, tmp_path, one_thread):
    g = load_all()["fisher"]
    assert g.suite == "score" and g.metrics == ("jfs", "mfs", "jfs_grad", "jfs_trace", "mfs_grad", "mfs_trace")
    assert {"n_score", "probes", "exact_trace", "seed"} <= set(g.settings) and "batch_size" not in g.settings
    m = tiny_model(act="softplus", width=4).requires_grad_(False)
    s = dict(DEFAULTS, eps=0.1, n_score=16, probes=8, batch_size=8)  # the exact pass: 64 HVPs a point
    res = g.fn(Context(m, digits, s, torch.device("cpu"), tmp_path))
    again = g.fn(Context(m, digits, dict(s, batch_size=16), torch.device("cpu"), tmp_path))
    exact = g.fn(Context(m, digits, dict(s, exact_trace=True), torch.device("cpu"), tmp_path))
    for name in ("jfs", "mfs"):
        r = res[name]
        assert r.n == 16 and r.value is not None and r.std is not None and r.std > 0
        assert r.value == pytest.approx(r.details["grad_term"] - r.details["trace_term"], rel=1e-6, abs=1e-9)
        assert r.std == pytest.approx(r.details["sd"] / 16**0.5)
        assert r.details["trace"].startswith("hutchinson") and r.details["trace_probe_se"] > 0
        assert r.details["second_derivatives"].startswith("second-order Taylor mode")
        assert again[name].value == pytest.approx(r.value, rel=1e-5, abs=1e-9)  # seeded, batch-independent
        assert exact[name].details["trace"] == "exact"
        # the decomposition as metrics of its own: the details' terms, with their own standard errors
        assert res[f"{name}_grad"].value == pytest.approx(r.details["grad_term"], rel=1e-9)
        assert res[f"{name}_trace"].value == pytest.approx(r.details["trace_term"], rel=1e-9)
        assert res[f"{name}_grad"].n == 16 and res[f"{name}_trace"].std > 0
        assert exact[name].details["grad_term"] == pytest.approx(r.details["grad_term"], rel=1e-6)
        # Hutchinson's mean agrees with the exact one within a few of its own standard errors
        assert abs(r.details["trace_term"] - exact[name].details["trace_term"]) < 4 * r.details["trace_probe_se"]
    direct = fisher_scores(m, digits.test.x[:16], digits.test.y[:16], exact=True)
    assert exact["jfs"].value == pytest.approx(direct["joint"]["score"].double().mean().item(), rel=1e-6)
    assert exact["mfs"].value == pytest.approx(direct["marginal"]["score"].double().mean().item(), rel=1e-6)
    # and those per-point terms against an independent computation on 6 of the points: the gradient
    # by autograd, the exact trace from the full Hessian (torch.autograd.functional.hessian)
    for kind in ("joint", "marginal"):
        grad_term, trace_term = _by_hessian(m, digits.test.x[:6], digits.test.y[:6], kind)
        assert direct[kind]["grad"][:6].double().mean().item() == pytest.approx(grad_term, rel=1e-5)
        assert direct[kind]["trace"][:6].double().mean().item() == pytest.approx(trace_term, rel=1e-4, abs=1e-6)
        assert direct[kind]["score"][:6].double().mean().item() == pytest.approx(grad_term - trace_term,
                                                                                 rel=1e-4, abs=1e-6)


class Mixed(nn.Module):
    """Ops beyond the fast rules: products of two derivative-carrying values, group norm, max
    pooling, indexing, powers, concatenation, shapes read off a value, functional softplus."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.gn = nn.GroupNorm(2, 6)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 4 * 4, 10)

    def forward(self, x):
        h = self.conv(x)
        h = self.gn(h) * torch.sigmoid(h) + h.tanh() - 0.5 * h
        h = F.max_pool2d(self.bn(h), 2)
        h = torch.cat([h[:, :3], h[:, 3:] ** 2], 1)
        h = h.view(h.size(0), -1)
        return self.fc(F.softplus(h, beta=2.0)) / 3.0


class Branchy(nn.Module):
    """Python control flow on a value: cannot be traced."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 10)

    def forward(self, x):
        h = x.flatten(1)
        if h.sum() > 0:
            h = torch.tanh(h)
        return self.fc(h)


def test_taylor_mode_through_other_ops_and_fallbacks():
    torch.manual_seed(0)
    m = EnergyModel(Mixed(), 0.5, 0.25, (3, 8, 8), 10).eval()
    m.net.bn.running_mean.uniform_(-0.2, 0.2)
    m.net.bn.running_var.uniform_(0.5, 2.0)
    x, y = torch.rand(3, 3, 8, 8), torch.tensor([0, 4, 9])
    probes = rademacher((3, 4, 3, 8, 8), torch.Generator().manual_seed(0))
    vs = probes.transpose(0, 1).float()
    f, f1, f2 = jet(m, x, vs)
    with torch.no_grad():
        torch.testing.assert_close(f, m.logits(x))
    # first and second directional derivatives against autograd, for one probe and point
    g = lambda t: m.logits(x[:1] + t * vs[0, :1])[0]  # noqa: E731
    t0 = torch.zeros(())
    torch.testing.assert_close(f1[0, 0], torch.autograd.functional.jacobian(g, t0), rtol=1e-4, atol=1e-6)
    second = torch.stack([hessian(lambda t, k=k: g(t)[k], t0) for k in range(10)])
    torch.testing.assert_close(f2[0, 0], second, rtol=1e-3, atol=1e-6)
    info = {}
    auto = fisher_terms(m, x, y, probes, info=info)
    assert info["method"] == "jet"
    rev = fisher_terms(m, x, y, probes, method="reverse")
    for kind in ("joint", "marginal"):
        torch.testing.assert_close(auto[kind]["trace"], rev[kind]["trace"], rtol=1e-4, atol=1e-7)
    # a model left in training mode is differentiated in eval mode (bench.core.energy.evaluates) and
    # handed back in training mode; untraceable networks fall back to nested forward mode
    m.train()
    torch.testing.assert_close(jet(m, x, vs)[2], f2)
    assert m.training and m.net.bn.training
    m.eval()
    b = EnergyModel(Branchy(), 0.5, 0.25, (3, 8, 8), 10).eval()
    with pytest.raises(JetUnsupported):
        jet(b, x, vs)
    fisher_terms(b, x, y, probes, info=info)
    assert info["method"] == "forward"


@pytest.mark.parametrize("arch", ["wrn-10-1", "jem-wrn-10-1"])
def test_taylor_mode_on_residual_networks(arch):
    """Residual additions, eval-mode batch norm, functional pooling and flatten, (leaky) ReLU."""
    from bench.inputs import nets

    torch.manual_seed(0)
    m = EnergyModel(nets.build(arch, 10, 3), 0.5, 0.25, (3, 32, 32), 10).eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 2.0)
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([3, 7])
    probes = rademacher((2, 3, 3, 32, 32), torch.Generator().manual_seed(0))
    info = {}
    t = fisher_terms(m, x, y, probes, info=info)
    assert info["method"] == "jet"
    rev = fisher_terms(m, x, y, probes, method="reverse")
    assert torch.equal(t["joint"]["trace"], torch.zeros(2))  # piecewise linear
    torch.testing.assert_close(t["marginal"]["trace"], rev["marginal"]["trace"], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(t["marginal"]["grad"], rev["marginal"]["grad"])


class QuadNet(nn.Module):
    """f(z)_k = -a_k ||z||^2 / 2 + b_k . z: every derivative known in closed form."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.register_buffer("a", a)
        self.register_buffer("b", b)

    def forward(self, z):
        h = z.flatten(1)
        return -0.5 * h.pow(2).sum(1, keepdim=True) * self.a + h @ self.b.T


def test_fisher_space_model_is_s_squared_times_pixel_by_hand(digits, tmp_path):
    """On z = (x - m)/s with f(z)_k = -a_k ||z||^2/2 + b_k.z, by hand (float64), per point:
    joint: grad_z E = a_y z - b_y, tr Hess_z E = a_y D; marginal (E = -logsumexp f, p = softmax f,
    g_k = grad_z f_k = -a_k z + b_k): grad_z E = -sum_k p_k g_k and tr Hess_z E =
    sum_k p_k a_k D - (sum_k p_k ||g_k||^2 - ||sum_k p_k g_k||^2).  In pixels grad_x = grad_z / s
    and Hess_x = Hess_z / s^2: the pixel-space scores are the model-space ones over s^2."""
    k, d, s_, m_ = 10, 64, 0.5, 0.5
    g = torch.Generator().manual_seed(0)
    a = torch.linspace(0.5, 2.0, k)
    b = 0.3 * torch.randn(k, d, generator=g)
    model = EnergyModel(QuadNet(a, b), m_, s_, (1, 8, 8), k).eval().requires_grad_(False)
    n = 6
    x, y = digits.test.x[:n], digits.test.y[:n]
    z = ((x.double() - m_) / s_).flatten(1)
    a64, b64 = a.double(), b.double()
    f = -0.5 * z.pow(2).sum(1, keepdim=True) * a64 + z @ b64.T
    gy = a64[y, None] * z - b64[y]
    jfs_hand = (0.5 * gy.pow(2).sum(1) - a64[y] * d).mean().item()
    p = torch.softmax(f, 1)
    gk = -a64[None, :, None] * z[:, None, :] + b64[None]  # (n, K, D)
    gbar = (p[:, :, None] * gk).sum(1)
    tr = (p * a64).sum(1) * d - ((p * gk.pow(2).sum(2)).sum(1) - gbar.pow(2).sum(1))
    mfs_hand = (0.5 * gbar.pow(2).sum(1) - tr).mean().item()

    grp = load_all()["fisher"]
    assert "fisher_space" in grp.settings
    base = dict(DEFAULTS, eps=0.1, n_score=n, exact_trace=True, batch_size=4)
    res = {sp: grp.fn(Context(model, digits, dict(base, fisher_space=sp), torch.device("cpu"), tmp_path))
           for sp in ("pixel", "model")}
    for name, hand in (("jfs", jfs_hand), ("mfs", mfs_hand)):
        assert res["model"][name].value == pytest.approx(hand, rel=1e-4)
        assert res["pixel"][name].value == pytest.approx(hand / s_**2, rel=1e-4)
        assert res["model"][name].details["fisher_space"] == "model"
        assert res["pixel"][name].details["fisher_space"] == "pixel"
        assert res["model"][name].details["normalisation"] == {"mean": [m_], "std": [s_]}
    with pytest.raises(BenchError, match="unknown fisher space 'latent'"):  # checked once, for the run
        validate(dict(DEFAULTS, fisher_space="latent"))


def _lse_reference(m, x, y):
    """Per point, from the Jacobian J = d f / d x (torch.func.jacrev, K x D) of a piecewise-linear net,
    where f is locally J x + b: joint 0.5 ||J_y||^2 and trace 0; marginal E = -logsumexp f has
    grad E = -J^T p and Hess E = -J^T (diag p - p p^T) J, so tr Hess E = -sum_k p_k ||J_k - J^T p||^2
    (sum_k p_k ||a_k||^2 - ||sum_k p_k a_k||^2 with a_k = J_k, the rows of J)."""
    from torch.func import jacrev

    out = {"joint_grad": [], "marginal_grad": [], "marginal_trace": []}
    shape = tuple(x.shape[1:])

    def f_of(v):
        return m.logits(v.view(1, *shape)).squeeze(0)

    for xi, yi in zip(x, y, strict=True):
        jac = jacrev(f_of)(xi.flatten()).double()  # (K, D)
        p = torch.softmax(f_of(xi.flatten()).double(), 0)
        mean_row = p @ jac
        out["joint_grad"].append(0.5 * jac[yi].pow(2).sum())
        out["marginal_grad"].append(0.5 * mean_row.pow(2).sum())
        out["marginal_trace"].append(-(p * (jac - mean_row).pow(2).sum(1)).sum())
    return {k: torch.stack(v) for k, v in out.items()}


def test_piecewise_linear_traces_joint_zero_marginal_logsumexp(digits, tmp_path, one_thread):
    """The paper's activation (leaky ReLU 0.2, no normalisation layer): the joint trace term is 0,
    the marginal one the log-sum-exp curvature computed from jacrev's Jacobian; the group's
    decomposition metrics equal those means, and both scores are >= 0 (as in the paper's Table 2)."""
    m = tiny_model(act="leaky_relu", width=4, seed=3).requires_grad_(False)
    assert not any(isinstance(mod, (nn.BatchNorm2d, nn.SiLU)) for mod in m.modules())
    assert any(isinstance(mod, nn.LeakyReLU) and mod.negative_slope == 0.2 for mod in m.modules())
    n = 4  # exact traces: 64 Hessian-vector products a point, twice
    x, y = digits.test.x[:n], digits.test.y[:n]
    ref = _lse_reference(m, x, y)
    assert ref["marginal_trace"].abs().min() > 1e-6  # the curvature is there to be found
    for method in ("jet", "reverse"):
        t = fisher_scores(m, x, y, exact=True, method=method)
        assert torch.equal(t["joint"]["trace"], torch.zeros(n))
        torch.testing.assert_close(t["joint"]["grad"].double(), ref["joint_grad"], rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(t["marginal"]["grad"].double(), ref["marginal_grad"], rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(t["marginal"]["trace"].double(), ref["marginal_trace"], rtol=1e-4, atol=1e-7)
    s = dict(DEFAULTS, eps=0.1, n_score=n, exact_trace=True, batch_size=n)
    res = fisher.fisher_group(Context(m, digits, s, torch.device("cpu"), tmp_path))
    assert res["jfs_trace"].value == 0.0 and res["jfs_trace"].std == 0.0
    assert res["jfs_grad"].value == pytest.approx(ref["joint_grad"].mean().item(), rel=1e-5)
    assert res["mfs_grad"].value == pytest.approx(ref["marginal_grad"].mean().item(), rel=1e-5)
    assert res["mfs_trace"].value == pytest.approx(ref["marginal_trace"].mean().item(), rel=1e-4)
    assert res["mfs_trace"].value < 0 < res["mfs"].value and res["jfs"].value == res["jfs_grad"].value > 0
    # Hutchinson: still exactly 0 for the joint energy (every v^T H v is 0)
    hutch = fisher.fisher_group(Context(m, digits, dict(s, exact_trace=False, probes=4), torch.device("cpu"), tmp_path))
    assert hutch["jfs_trace"].value == 0.0
