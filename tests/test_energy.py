import torch
import torch.nn.functional as F

from tests.conftest import tiny_model


def test_eq13_joint_minus_marginal_is_cross_entropy(digits):
    m = tiny_model()
    x, y = digits.test.x[:32], digits.test.y[:32]
    ce = F.cross_entropy(m.logits(x), y, reduction="none")
    diff = m.energy_joint(x, y) - m.energy_marginal(x)
    torch.testing.assert_close(diff, ce, rtol=0, atol=1e-5)
    torch.testing.assert_close(m.energy(x, y, "ce"), ce, rtol=0, atol=1e-5)


def test_energies_match_definitions(digits):
    m = tiny_model()
    x, y = digits.test.x[:8], digits.test.y[:8]
    f = m.net((x - 0.5) / 0.5)  # the model owns its normalisation
    assert torch.equal(m.logits(x), f)
    assert torch.equal(m.energy_joint(x, y), -f[torch.arange(8), y])
    torch.testing.assert_close(m.energy_marginal(x), -torch.log(torch.exp(f).sum(1)))


def test_grad_energy_is_per_image_gradient(digits):
    m = tiny_model()
    x, y = digits.test.x[:4], digits.test.y[:4]
    _, g = m.grad_energy(x, y, "joint")
    for i in range(4):
        xi = x[i:i + 1].clone().requires_grad_(True)
        (gi,) = torch.autograd.grad(m.energy_joint(xi, y[i:i + 1]).sum(), xi)
        torch.testing.assert_close(g[i:i + 1], gi)
