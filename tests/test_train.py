"""The training module: recipes, one step per method, exact resume, released checkpoints."""

import json
from dataclasses import replace

import pytest
import torch

from bench.cli import main
from bench.core.energy import EnergyModel
from bench.core.errors import BenchError
from bench.inputs import checkpoints, zoo
from bench.train import METHODS, load_recipe, train
from bench.train.loop import learning_rate, resume_path
from bench.train.methods import TrainState
from bench.train.monitor import energy_changes
from bench.train.recipe import Recipe

from .conftest import tiny_model


def small(method: str, **kw) -> Recipe:
    """The digits recipe of ``method`` cut to a few seconds: a narrow net, short SGLD."""
    r = load_recipe(f"digits-{method}")
    cut = dict(arch_kwargs={"width": 4}, epochs=2, batch_size=256, sgld_steps=3, buffer_size=64,
               monitor_size=16, final_eval_n=40, train_n=256)
    return replace(r, **{**cut, **kw})


def test_every_recipe_parses_and_names_a_method():
    names = zoo.recipe_names()
    for dataset in ("digits", "cifar10", "cifar100"):
        for m in METHODS:
            assert f"{dataset}-{m}" in names
    for n in names:
        r = load_recipe(n)
        assert r.method in METHODS and 0 < r.eps < 1


def test_cifar_recipes_carry_table4():
    jeat, at = load_recipe("cifar10-jeat"), load_recipe("cifar10-at")
    assert (jeat.optimizer, jeat.lr, jeat.batch_size, jeat.milestones, jeat.epochs, jeat.weight_decay) == \
        ("adam", 1e-4, 64, [160, 180], 200, 0.0)
    assert (at.optimizer, at.lr, at.batch_size, at.milestones, at.epochs, at.weight_decay, at.momentum) == \
        ("sgd", 0.1, 128, [100, 150], 200, 2e-4, 0.9)
    assert jeat.arch == "wrn-28-10" and abs(jeat.eps - 8 / 255) < 1e-12
    assert load_recipe("cifar100-jeat").dataset == "cifar100"


def test_bad_recipes_are_one_line_errors(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text('method = "jeat"\nlearning_rate = 0.1\n')
    with pytest.raises(BenchError, match="unknown recipe keys learning_rate"):
        load_recipe(p)
    p.write_text('method = "magic"\n')
    with pytest.raises(BenchError, match="unknown method"):
        load_recipe(p)
    p.write_text('method = "at"\neps = 8\n')
    with pytest.raises(BenchError, match="not on the \\[0,1\\] scale"):
        load_recipe(p)
    with pytest.raises(BenchError, match="unknown recipe"):
        load_recipe("no-such-recipe")


def test_learning_rate_schedule():
    r = Recipe(name="x", method="normal", lr=0.1, milestones=[2, 4], warmup_iters=10)
    assert learning_rate(r, 0, 0) == pytest.approx(0.01)
    assert learning_rate(r, 1, 50) == pytest.approx(0.1)
    assert learning_rate(r, 2, 60) == pytest.approx(0.01)
    assert learning_rate(r, 5, 99) == pytest.approx(0.001)


def retyped_pgd20(model, x, y, eps: float, seed: int, batch_size: int = 500) -> float:
    """PGD-20 accuracy typed out here: per batch (one generator seeded by ``seed`` for the whole
    set), start x + (2u - 1) eps, u ~ U(0, 1), clipped to [0, 1]; 20 steps of eps/4 along the sign
    of the summed cross-entropy's gradient, each projected onto the eps box around x and [0, 1]."""
    model = model.eval()
    gen = torch.Generator().manual_seed(int(seed))
    correct = 0
    for i in range(0, len(y), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        adv = (xb + (2 * torch.rand(xb.shape, generator=gen) - 1) * eps).clamp(0, 1)
        for _ in range(20):
            adv.requires_grad_(True)
            f = model.logits(adv)
            loss = (torch.logsumexp(f, 1) - f.gather(1, yb[:, None]).squeeze(1)).sum()
            (g,) = torch.autograd.grad(loss, adv)
            adv = torch.min(torch.max(adv.detach() + eps / 4 * g.sign(), xb - eps), xb + eps).clamp(0, 1)
        with torch.no_grad():
            correct += int((model.logits(adv).argmax(1) == yb).sum())
    return correct / len(y)


def test_robust_accuracy_equals_a_retyped_pgd20(digits):
    """On a trained net (the released normal model) at an eps where PGD-20 neither wins nor
    fails everywhere, over several batches sharing one random stream."""
    from bench.train.loop import robust_accuracy

    torch.manual_seed(0)
    m = checkpoints.load(str(zoo.models_dir() / "digits" / "digits-normal.safetensors")).model.eval()
    x, y = digits.test.x[:90], digits.test.y[:90]
    ours = robust_accuracy(m, x, y, 0.1, seed=3, batch_size=40)
    assert ours == retyped_pgd20(m, x, y, 0.1, 3, batch_size=40)
    with torch.no_grad():
        clean = (m.logits(x).argmax(1) == y).double().mean().item()
    assert 0.05 < ours < clean - 0.05  # the attack does something, and not everything


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_and_writes_a_loadable_checkpoint(tmp_path, method, digits):
    out = tmp_path / f"{method}.safetensors"
    s = train(small(method), out, show_progress=False)
    loaded = checkpoints.load(str(out))
    assert loaded.sha256 == s["sha256"] == checkpoints.sha256(out)
    meta = loaded.meta
    assert meta["method"] == method and meta["epochs"] == 2 and len(meta["history"]) == 2
    assert meta["final_metrics"]["test_accuracy"] == s["test_accuracy"]
    # the recorded PGD-20 equals a re-typed PGD-20 on the same points and random start
    r = small(method)
    xt, yt = digits.test.x[:r.final_eval_n], digits.test.y[:r.final_eval_n]
    assert s["test_pgd20"] == meta["final_metrics"]["test_pgd20"] == retyped_pgd20(loaded.model, xt, yt, r.eps, r.seed)
    assert s["test_pgd20"] <= s["test_accuracy"]
    assert all(torch.isfinite(p).all() for p in loaded.model.parameters())
    assert (loaded.replay_buffer is not None) == METHODS[method].sgld
    if METHODS[method].adversarial:
        assert meta["threat_model"]["eps"] == pytest.approx(0.1)
        ec = meta["history"][-1]["energy_changes"]
        assert set(ec) == {"dx_joint", "dtheta_joint", "dx_marginal", "dtheta_marginal"}
        assert ec["dx_joint"]["var"] >= 0
    assert not resume_path(out).exists()  # removed once training finished


def test_training_improves_a_normal_model(tmp_path):
    r = replace(small("normal"), arch_kwargs={"width": 8}, epochs=3, batch_size=32, optimizer="adam", lr=3e-3,
                train_n=None, final_eval_n=200)
    s = train(r, tmp_path / "n.safetensors", show_progress=False)
    assert s["test_accuracy"] > 0.5  # chance is 0.1


class Killed(Exception):
    pass


def kill_after(epoch):
    def hook(entry):
        if entry["epoch"] == epoch:
            raise Killed

    return hook


@pytest.mark.parametrize("method", ["jeat", "at"])
def test_resume_continues_bit_exactly(tmp_path, method):
    r = small(method, epochs=2)
    full = tmp_path / "full.safetensors"
    train(r, full, show_progress=False)
    part = tmp_path / "part.safetensors"
    with pytest.raises(Killed):  # killed after the first epoch's files are on disk
        train(r, part, show_progress=False, on_epoch=kill_after(1))
    assert resume_path(part).exists() and checkpoints.load(str(part)).meta["epochs"] == 1
    train(r, part, resume=True, show_progress=False)
    a, b = checkpoints.load(str(full)), checkpoints.load(str(part))
    for (k, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(x, y), k
    if a.replay_buffer is not None:
        assert torch.equal(a.replay_buffer, b.replay_buffer)
    assert a.meta["history"][1]["loss"] == b.meta["history"][1]["loss"]
    assert a.meta["final_metrics"] == b.meta["final_metrics"]


def test_resume_refuses_another_recipe(tmp_path):
    out = tmp_path / "m.safetensors"
    with pytest.raises(Killed):
        train(small("normal"), out, show_progress=False, on_epoch=kill_after(1))
    with pytest.raises(BenchError, match="another recipe or seed"):
        train(small("normal", seed=5), out, resume=True, show_progress=False)
    with pytest.raises(BenchError, match="no resume state"):
        train(small("normal"), tmp_path / "other.safetensors", resume=True, show_progress=False)


def test_energy_monitor_leaves_the_run_untouched():
    model = tiny_model()
    r = small("jeat")
    from bench.engines.sampling import ReplayBuffer

    gen = torch.Generator().manual_seed(0)
    state = TrainState(model, r, gen, ReplayBuffer(16, (1, 8, 8), 0.05, "cpu", gen))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    buf = state.buffer.data.clone()
    g_state = gen.get_state()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.rand(8, 1, 8, 8)
    y = torch.arange(8) % 10
    ec = energy_changes(state, METHODS["jeat"], lambda p: torch.optim.Adam(p, lr=1e-2), opt.state_dict(), x, y, 0)
    assert ec["dx_joint"]["mean"] > 0  # the energy attack raises E(x, y) (Fig. 3a)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert torch.equal(state.buffer.data, buf) and torch.equal(gen.get_state(), g_state)


def test_cli_train_and_bad_input(tmp_path, capsys):
    rc = main(["train", "--recipe", "nope", "--out", str(tmp_path / "x.safetensors")])
    assert rc == 2 and "unknown recipe" in capsys.readouterr().err
    rc = main(["train", "--recipe", "digits-normal", "--out", str(tmp_path / "x.pt")])
    assert rc == 2 and "must end in .safetensors" in capsys.readouterr().err
    rc = main(["train", "--recipe", "digits-normal", "--out", str(tmp_path / "missing" / "x.safetensors")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_released_checkpoints_match_their_manifest():
    man = zoo.manifest()
    assert set(man["models"]) == {f"digits-{m}" for m in METHODS}
    for name, e in man["models"].items():
        path = zoo.models_dir() / "digits" / e["file"]
        assert path.stat().st_size < 2_000_000
        assert checkpoints.sha256(path) == e["sha256"], name
        meta = checkpoints.load(str(path)).meta
        assert meta["method"] == e["method"] and meta["recipe"] == e["recipe"]
        assert meta["final_metrics"]["test_accuracy"] == pytest.approx(e["clean_test_accuracy"])
    acc = {e["method"]: e for e in man["models"].values()}
    assert acc["normal"]["clean_test_accuracy"] >= 0.95
    for m in ("at", "prejeat", "jeat"):  # adversarial training buys robustness
        assert acc[m]["pgd20_test_accuracy"] > acc["normal"]["pgd20_test_accuracy"] + 0.2
    assert json.dumps(man)  # plain JSON


def test_cifar_recipe_trains_on_cifar_files_through_the_cli(tmp_path, capsys):
    """The CIFAR-10 JEAT recipe's code path (data from --data-root, 3-channel energy attack, SGLD)
    on a tiny file in CIFAR's format, with a narrow WRN swapped in through a recipe copy."""
    from .test_data import _write_cifar10

    _write_cifar10(tmp_path, n=8)
    text = (zoo.recipes_dir() / "cifar10-jeat.toml").read_text()
    text = text.replace('arch = "wrn-28-10"', 'arch = "wrn-10-1"').replace("buffer_size = 10000", "buffer_size = 16")
    text = text.replace("sgld_steps = 20", "sgld_steps = 2").replace("final_eval_n = 1000", "final_eval_n = 8")
    recipe = tmp_path / "tiny-cifar10-jeat.toml"
    recipe.write_text(text)
    out = tmp_path / "c.safetensors"
    rc = main(["train", "--recipe", str(recipe), "--out", str(out), "--epochs", "1", "--data-root", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    meta = checkpoints.load(str(out)).meta
    assert meta["dataset"] == "cifar10" and meta["input_shape"] == [3, 32, 32] and meta["arch"] == "wrn-10-1"
    assert meta["threat_model"]["eps"] == pytest.approx(8 / 255)
    rc = main(["train", "--recipe", "cifar10-jeat", "--out", str(tmp_path / "d.safetensors"),
               "--data-root", str(tmp_path / "nowhere")])
    assert rc == 2 and "cifar-10-batches-py" in capsys.readouterr().err


@pytest.mark.parametrize("method", METHODS)
def test_one_step_of_each_method_changes_the_parameters(method, digits):
    from bench.engines.sampling import ReplayBuffer

    torch.manual_seed(0)
    model = tiny_model()
    r = small(method)
    gen = torch.Generator().manual_seed(0)
    m = METHODS[method]
    state = TrainState(model, r, gen, ReplayBuffer(16, (1, 8, 8), 0.05, "cpu", gen) if m.sgld else None)
    x, y = digits.train.x[:32], digits.train.y[:32]
    x_in = m.inputs(state, x, y)
    assert x_in.min() >= 0 and x_in.max() <= 1
    if m.adversarial:
        assert (x_in - x).abs().max() <= r.eps + 1e-6 and not torch.equal(x_in, x)
    assert torch.equal(x_in, x) == (method in ("normal", "jem"))
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss, logits = m.loss(state, x_in, x, y)
    assert torch.isfinite(loss) and logits.shape == (32, 10)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


# a linear model on 2 x 2 images with two classes and fixed weights: every loss and every attack
# is worked out by hand below (float64 throughout)
W = torch.tensor([[1.0, -2.0, 0.5, -1.0], [-1.0, 1.0, 2.0, -0.5]], dtype=torch.float64)
B = torch.tensor([0.1, -0.2], dtype=torch.float64)
X = torch.tensor([[0.3, 0.5, 0.6, 0.4], [0.7, 0.35, 0.45, 0.55], [0.5, 0.5, 0.3, 0.6]],
                 dtype=torch.float64).view(3, 1, 2, 2)
Y = torch.tensor([0, 1, 0])


def linear_model() -> EnergyModel:
    lin = torch.nn.Linear(4, 2).double()
    with torch.no_grad():
        lin.weight.copy_(W)
        lin.bias.copy_(B)
    net = torch.nn.Sequential(torch.nn.Flatten(), lin)
    return EnergyModel(net, 0.0, 1.0, (1, 2, 2), 2).double().eval()


def hand_logits(x):
    return x.flatten(1) @ W.T + B


def hand_ce(x, y):
    f = hand_logits(x)
    return torch.log(torch.exp(f).sum(1)) - f[torch.arange(len(y)), y]  # per point


def hand_marginal(x):
    return -torch.log(torch.exp(hand_logits(x)).sum(1))


@pytest.mark.parametrize("method", METHODS)
def test_each_method_loss_and_attack_by_hand(method, monkeypatch):
    """Per method: the points it trains on (clean; x + sigma N clamped; the corner of the eps box
    that the attack's linear objective points to) and its loss, against formulas typed out here.
    With two classes the cross-entropy attack ascends CE = softplus(f_other - f_y), along
    sign(W_other - W_y); the energy attack ascends E(x, y) = -f_y, along -sign(W_y): the two differ
    in a pixel of each point, so the test tells which one each method runs.  10 steps of eps/4
    reach the corner from any start in the box."""
    from bench.train import methods as M

    eps, sigma, weight = 0.1, 0.2, 0.7
    r = Recipe(name="hand", method=method, eps=eps, attack_steps=10, attack_step_size=eps / 4,
               noise_sigma=sigma, energy_weight=weight, sgld_steps=2)
    model = linear_model()
    gen = torch.Generator().manual_seed(0)
    m = METHODS[method]
    state = TrainState(model, r, gen, None)
    x_in = m.inputs(state, X, Y)
    other = 1 - Y
    ce_dir = torch.sign(W[other] - W[Y]).view(3, 1, 2, 2)
    energy_dir = -torch.sign(W[Y]).view(3, 1, 2, 2)
    assert (ce_dir != energy_dir).flatten(1).any(1).all()
    if method in ("normal", "jem"):
        expected = X
    elif method == "noise":
        expected = (X + sigma * torch.randn(X.shape, generator=torch.Generator().manual_seed(0),
                                            dtype=X.dtype)).clamp(0, 1)
    elif method == "at":
        expected = X + eps * ce_dir
        assert (hand_ce(x_in, Y) > hand_ce(X, Y)).all()  # ascends the cross-entropy
    else:  # prejeat, jeat: the energy attack of Eq. 18
        expected = X + eps * energy_dir
        assert (-hand_logits(x_in)[torch.arange(3), Y] > -hand_logits(X)[torch.arange(3), Y]).all()
    torch.testing.assert_close(x_in, expected, rtol=0, atol=1e-12)

    neg = torch.tensor([[0.9, 0.1, 0.2, 0.8], [0.2, 0.3, 0.9, 0.1]], dtype=torch.float64).view(2, 1, 2, 2)
    monkeypatch.setattr(M, "sgld_negatives", lambda st, n: neg)  # fixed SGLD samples x~
    loss, logits = m.loss(state, x_in, X, Y)
    torch.testing.assert_close(logits, hand_logits(x_in), rtol=0, atol=1e-12)
    ce = hand_ce(x_in, Y).mean()
    if m.sgld:  # Alg. 1 / JEM: CE(x_in) + w (mean E(x_in) - mean E(x~)), E the marginal energy
        expected_loss = ce + weight * (hand_marginal(x_in).mean() - hand_marginal(neg).mean())
        assert state.sgld_config.energy == "marginal"
    else:
        expected_loss = ce
    assert loss.item() == pytest.approx(expected_loss.item(), abs=1e-12)
