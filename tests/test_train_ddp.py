"""Data-parallel ``bench train`` on two gloo processes: the same training as one process, one
replay buffer, bit-identical weights on every rank, exact resume, and a refused resume across
process counts.

Two launchers: ``torch.multiprocessing.spawn`` calls ``train`` (or ``main``) in each process, so a
test can kill a run after an epoch and look at what every rank holds; one spawn (the module fixture
``spawned``) runs every such job in turn, as its two fresh interpreters cost more than all the
trainings.  ``torchrun`` runs the command line.
"""

import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from bench.cli import main
from bench.inputs import checkpoints
from bench.train import load_recipe, parallel, train
from bench.train.loop import resume_path
from bench.train.recipe import Recipe

from .test_train import Killed, kill_after, small

ENV = {**os.environ, "CI": "true", "OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "bench"]


class KillAfter:
    """``kill_after`` that pickles (spawned ranks get it as an argument)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def __call__(self, entry: dict) -> None:
        if entry["epoch"] == self.epoch:
            raise Killed


def _free_ports(k: int) -> list[int]:
    """``k`` distinct free ports (every socket held until all are chosen)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(k)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


@dataclass
class Job:
    """What every spawned rank runs in turn: ``train(recipe, out, **kwargs)``, saving the state dict
    it holds after each epoch to ``held``; or, with ``cli``, the command line ``main(cli)``, whose
    exit code and standard error go to ``held/cli-rank<r>.txt``."""

    held: Path
    recipe: Recipe | None = None
    out: Path | None = None
    kwargs: dict = field(default_factory=dict)
    cli: list[str] | None = None


def _rank(rank, world, ports, jobs):
    """One spawned rank: for each job in turn, joins a fresh group through torchrun's variables and
    trains (or runs the command line); it saves the state dict it holds after every epoch (spying on
    the loop's own sync check) to the job's ``held``, and rank 0 keeps what a killed job left for
    its resume (``held/resume.pt``)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      CI="true")
    torch.set_num_threads(1)
    check = parallel.check_in_sync
    for port, job in zip(ports, jobs, strict=True):
        os.environ["MASTER_PORT"] = str(port)

        def spy(model, epoch, held=job.held):
            torch.save(model.state_dict(), held / f"epoch{epoch}-rank{rank}.pt")
            check(model, epoch)

        parallel.check_in_sync = spy
        try:
            if job.cli is None:
                train(job.recipe, job.out, show_progress=False, **job.kwargs)
            else:
                err = io.StringIO()
                with contextlib.redirect_stderr(err):
                    code = main(job.cli)
                (job.held / f"cli-rank{rank}.txt").write_text(f"{code}\n{err.getvalue()}")
        except Killed:
            if rank == 0:
                shutil.copy(resume_path(job.out), job.held / "resume.pt")
        # the group is destroyed and freed (distributed.close/abandon): its worker threads are gone, so
        # none can outlive the interpreter (where one aborted a finished rank at exit: "terminate called
        # without an active exception", SIGABRT, while torch._dynamo held the group)
        left = _group_threads()
        assert not left, f"rank {rank}: threads of the process group left: {left}"


def _group_threads() -> list[str]:
    """The process group's threads alive in this process, by the names gloo gives them
    (``gloo_tcp_loop``, ``pt_gloo_runloop``; a BLAS or OpenMP pool a job started is not one).
    Linux's /proc; elsewhere none are seen and nothing is checked."""
    task = "/proc/self/task"
    if not os.path.isdir(task):
        return []
    names = []
    for t in os.listdir(task):
        try:
            names.append(Path(task, t, "comm").read_text().strip())
        except OSError:  # the thread ended meanwhile
            continue
    return sorted(n for n in names if "gloo" in n)


NORMAL = small("normal", epochs=2, batch_size=45, train_n=181)
JEAT = small("jeat", epochs=2, batch_size=64, train_n=200, arch_kwargs={"width": 4, "norm": "batch"})
TINY_NORMAL = 'method = "normal"\narch_kwargs = {width = 4}\nepochs = 2\ntrain_n = 100\nfinal_eval_n = 20\n'


def refused_resume(d: Path) -> list[str]:
    return ["train", "--recipe", str(d / "tiny-normal.toml"), "--out", str(d / "m.safetensors"), "--device", "cpu",
            "--resume"]


@pytest.fixture(scope="module")
def spawned(tmp_path_factory) -> Path:
    """The two-rank work the tests below check, in one ``torch.multiprocessing.spawn`` (its two fresh
    interpreters cost more than all of it): ``bench train --resume`` of a run one process started
    and was killed in (refused/); ``normal`` into two.safetensors; ``jeat`` killed after epoch 1
    into part.safetensors, uninterrupted into full.safetensors, then ``part`` resumed.  The resume
    runs in the processes the killed run left, after the whole uninterrupted run: the resume file
    must restore what that run moved (``train`` reseeds only a fresh run's streams)."""
    d = tmp_path_factory.mktemp("ranks")
    refused = d / "refused"
    refused.mkdir()
    (refused / "tiny-normal.toml").write_text(TINY_NORMAL)
    with pytest.raises(Killed):  # one process
        train(load_recipe(refused / "tiny-normal.toml"), refused / "m.safetensors", show_progress=False,
              on_epoch=kill_after(1))
    jobs = [Job(refused, cli=refused_resume(refused)),
            Job(d / "normal", NORMAL, d / "two.safetensors"),
            Job(d / "part", JEAT, d / "part.safetensors", {"on_epoch": KillAfter(1)}),
            Job(d / "full", JEAT, d / "full.safetensors"),
            Job(d / "part", JEAT, d / "part.safetensors", {"resume": True})]
    for job in jobs:
        job.held.mkdir(exist_ok=True)
    mp.spawn(_rank, args=(2, _free_ports(len(jobs)), jobs), nprocs=2, join=True)
    return d


def assert_ranks_identical(held: Path, epoch: int) -> None:
    a, b = (torch.load(held / f"epoch{epoch}-rank{r}.pt") for r in (0, 1))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def weights(path: Path) -> dict:
    return checkpoints.load(str(path)).model.state_dict()


def test_two_processes_train_like_one(spawned, tmp_path):
    """``normal`` has no randomness but the shuffle, so two processes must reach one process's weights
    up to the summation order of the gradient all-reduce.  181 points in batches of 45: shares of
    22 and 23 (the loss weighting matters), and a last batch of 1 (rank 0's share is empty)."""
    one, two = tmp_path / "one.safetensors", spawned / "two.safetensors"
    train(NORMAL, one, show_progress=False)
    for epoch in (1, 2):
        assert_ranks_identical(spawned / "normal", epoch)
    a, b = weights(one), weights(two)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"max |w_1proc - w_2proc| = {diff:.3g}")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    ma, mb = checkpoints.load(str(one)).meta, checkpoints.load(str(two)).meta
    assert "processes" not in ma and mb["processes"] == 2
    for ea, eb in zip(ma["history"], mb["history"], strict=True):
        assert eb["loss"] == pytest.approx(ea["loss"], rel=1e-5)
        assert (eb["train_accuracy"], eb["test_accuracy"]) == (ea["train_accuracy"], ea["test_accuracy"])
    assert not resume_path(two).exists()


def test_two_process_resume_continues_exactly(spawned):
    """jeat (attack, SGLD, replay buffer) under two processes: killed after epoch 1 and resumed, it
    reaches the uninterrupted run's weights and buffer bit for bit (every rank's random stream and
    the shared buffer stream are in the resume file); both ranks hold the same weights throughout,
    batch-norm running statistics included (per rank on CPU, averaged after every epoch)."""
    full, part = spawned / "full.safetensors", spawned / "part.safetensors"
    state = torch.load(spawned / "part" / "resume.pt", weights_only=True)  # what the killed run left
    assert state["processes"] == 2 and state["g_train_ranks"].shape[0] == 2 and state["epoch"] == 1
    for epoch in (1, 2):
        assert_ranks_identical(spawned / "full", epoch)
    assert_ranks_identical(spawned / "part", 2)
    a, b = checkpoints.load(str(full)), checkpoints.load(str(part))
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    assert torch.equal(a.replay_buffer, b.replay_buffer)
    assert a.meta["history"][1]["loss"] == b.meta["history"][1]["loss"]
    assert a.meta["final_metrics"] == b.meta["final_metrics"]


TINY_JEAT = """method = "jeat"
arch_kwargs = {width = 4}
epochs = 2
optimizer = "adam"
lr = 1e-3
batch_size = 64
eps = 0.1
sgld_steps = 3
buffer_size = 64
train_n = 200
final_eval_n = 40
monitor_size = 16
"""


def test_jeat_trains_under_torchrun(tmp_path):
    recipe = tmp_path / "tiny-jeat.toml"
    recipe.write_text(TINY_JEAT)
    out = tmp_path / "m.safetensors"
    p = subprocess.run([*TORCHRUN, "train", "--recipe", str(recipe), "--out", str(out), "--device", "cpu"],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.count("sha256=") == 1 and "processes=2" in p.stdout  # rank 0 reports, once
    assert p.stderr.count("tiny-jeat epoch 2/2") == 1
    assert sorted(f.name for f in tmp_path.iterdir()) == ["m.safetensors", "tiny-jeat.toml"]
    loaded = checkpoints.load(str(out))
    meta = loaded.meta
    assert meta["processes"] == 2 and meta["method"] == "jeat" and meta["epochs"] == 2
    assert loaded.replay_buffer is not None and loaded.replay_buffer.shape == (64, 1, 8, 8)
    assert torch.isfinite(loaded.replay_buffer).all()
    for e in meta["history"]:
        assert all(torch.isfinite(torch.tensor(e[k])) for k in ("loss", "train_accuracy", "test_accuracy"))
        assert e["sgld_diverged"] == 0 and set(e["energy_changes"]) >= {"dx_joint", "dtheta_joint"}


def test_resume_with_another_number_of_processes_is_refused(spawned, capsys):
    """A resume file one process wrote is refused by two (each rank: exit 2, one error line), and
    one two processes wrote is refused by one."""
    d = spawned / "refused"
    for rank in (0, 1):
        code, err = (d / f"cli-rank{rank}.txt").read_text().split("\n", 1)
        assert code == "2" and err.count("\n") == 1 and err.startswith("error: --resume: ")
        assert "written by 1 process(es), this run has 2; resume in one process (no torchrun)" in err
    out = d / "m.safetensors"
    state = torch.load(resume_path(out), weights_only=True)  # the same file, as if two processes wrote it
    torch.save({**state, "processes": 2}, resume_path(out))
    capsys.readouterr()
    assert main(refused_resume(d)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "written by 2 process(es), this run has 1; resume with torchrun " \
        "--nproc_per_node=2" in err
