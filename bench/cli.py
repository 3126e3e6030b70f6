"""The ``bench`` command line: parses, calls library functions, prints.

Exit codes: 0 success, 1 regression found by ``check``, 2 bad input or usage (one line).
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from pathlib import Path

import click

from bench.cli_options import NonEmptyPath, setting_options
from bench.cli_results import check, compare, table
from bench.core.errors import BenchError
from bench.core.settings import SPECS

DEVICE = click.Choice(["auto", "cpu", "cuda"])
N_REF_HELP = SPECS["n_ref"].help


class SuiteOption(click.Option):
    """``--suite``, whose help lists the registered suites (``bench.metrics.suites.names``) when shown."""

    def get_help_record(self, ctx):
        from bench.metrics import suites

        self.help = "all, or a comma list of: " + ", ".join(suites.names())
        return super().get_help_record(ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="jeat-bench")
def cli():
    """JEAT-Bench: robustness and generative capability of classifiers read as energy models."""


for _command in (table, check, compare):  # the commands that read runs (bench/cli_results.py)
    cli.add_command(_command)


@cli.command()
@click.option("--model", "model", multiple=True, help="checkpoint: .safetensors, .pt/.pth (+ --arch), JEM file, "
              "py:module:function, rb:NAME. Default: the released digits JEAT model. Repeatable: each model into "
              "OUT/<its stem>, then one table over them into OUT/tables")
@click.option("--suite", default="all", show_default=True, cls=SuiteOption)
@click.option("--out", default="runs/default", show_default=True, type=NonEmptyPath(path_type=Path))
@click.option("--dataset", default=None, help="digits, fashion-mnist, cifar10, cifar100, cifar10-c, cifar100-c, folder:PATH, npz:PATH "
              "(default: the checkpoint's)")
@click.option("--data-root", default=None, help="directory holding CIFAR / Fashion-MNIST data")
@click.option("--download", is_flag=True, help="download CIFAR / Fashion-MNIST if missing (needs network)")
@click.option("--rb-model-dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="folder of rb:NAME models in RobustBench's layout, DIR/<dataset>/Linf/<NAME>.pt: a file there is "
              "read with no network, a missing one downloaded there (default: ./models, robustbench's own)")
@click.option("--arch", default=None, help="architecture of a plain state dict, e.g. wrn-28-10, resnet18")
@click.option("--device", default="auto", type=DEVICE, show_default=True)
@setting_options
@click.option("--resume/--no-resume", default=True, show_default=True, help="reuse finished metrics in --out")
@click.option("--name", default=None, help="the run's row label in tables (results.json run.name); changes no number")
@click.option("--plan", "plan_only", is_flag=True, help="print the run's plan (each group's work and estimated time "
              "on this device) and exit, writing nothing")
def run(model, suite, out, dataset, data_root, download, rb_model_dir, arch, device, resume, name, plan_only,
        **settings):
    """Evaluate a model; writes OUT/results.json, OUT/tables, OUT/figures, OUT/samples."""
    from bench.pipeline import runner, several

    if rb_model_dir is not None and not any(m.startswith("rb:") for m in model):
        raise BenchError("--rb-model-dir is the folder of rb:NAME models; no --model rb:NAME was given")

    if plan_only:  # each model's plan, nothing written
        for m in model or (None,):
            runner.run(model=m, suite=suite, out=Path(out) / several.model_stem(m) if len(model) > 1 else out,
                       dataset=dataset, data_root=data_root, arch=arch, device=device, resume=resume,
                       download=download, settings=settings, rb_model_dir=rb_model_dir, plan_only=True)
        return
    if len(model) > 1:  # several: each into OUT/<stem>, then one bench table over them
        built = several.run_many(list(model), out, name=name, suite=suite, dataset=dataset, data_root=data_root,
                                 arch=arch, device=device, resume=resume, download=download, settings=settings,
                                 rb_model_dir=rb_model_dir)
        if built is not None:
            click.echo(f"wrote {len(built.runs)} runs and their tables to {Path(out) / 'tables'}")
        return
    model = model[0] if model else None
    res = runner.run(model=model, suite=suite, out=out, dataset=dataset, data_root=data_root, arch=arch,
                     device=device, resume=resume, download=download, settings=settings, name=name,
                     rb_model_dir=rb_model_dir)
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 reports
        return
    from bench.outputs import console

    for line in console.summary(res):  # value, ± standard error, n; then the threat model (eps)
        click.echo(line)
    click.echo(f"wrote {Path(out) / 'results.json'} in {res.run['seconds']:.1f} s")


@cli.command()
@click.option("--recipe", required=True, help="recipe name (see `bench models`) or path to a .toml")
@click.option("--out", required=True, type=NonEmptyPath(dir_okay=False, path_type=Path), help="output .safetensors")
@click.option("--epochs", default=None, type=int, help="override the recipe's epochs")
@click.option("--device", default="auto", type=DEVICE, show_default=True)
@click.option("--seed", default=None, type=int, help="default: the recipe's seed")
@click.option("--resume", is_flag=True, help="continue from OUT's resume state, exactly")
@click.option("--data-root", default=None, help="directory holding CIFAR data")
@click.option("--download", is_flag=True, help="download CIFAR if missing (needs network)")
def train(recipe, out, epochs, device, seed, resume, data_root, download):
    """Train a model from a recipe (normal, noise, at, prejeat, jeat, jem).  Under torchrun
    (``torchrun --nproc_per_node=N -m bench train ...``) it trains data-parallel on N processes."""
    from bench import train as training
    from bench.runtime.execution import resolve_device

    try:
        summary = training.train(recipe, out, epochs=epochs, device=str(resolve_device(device)),
                                 seed=seed, resume=resume, data_root=data_root, download=download)
    except KeyboardInterrupt as e:  # train's own hint: its work is kept per epoch, not per metric
        raise _Stopped(_train_hint(out, e)) from None
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 reports
        return
    click.echo(" ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, dict | list)))


EXTRACTOR_WEIGHTS_HELP = "weights file of a --fid-extractor encoder (DINOv2, CLIP, VGG16; never downloaded)"


@cli.command()
@click.argument("path", metavar="PATH", type=NonEmptyPath(path_type=Path))
@click.option("--dataset", required=True, help="the data set whose training split is the reference: digits, "
              "fashion-mnist, cifar10, cifar100, folder:PATH, npz:PATH")
@click.option("--out", default=None, type=NonEmptyPath(path_type=Path), help="default: runs/samples-<PATH name>")
@click.option("--ref-stats", "ref_stats", default=None, type=NonEmptyPath(dir_okay=False),
              help="reference statistics file (bench ref-stats) instead of the training split's")
@click.option("--data-root", default=None, help="directory holding CIFAR / Fashion-MNIST data")
@click.option("--fid-extractor", default="auto", show_default=True,
              help="auto, inception, fid-helper, dinov2-vit-s14, clip-vit-b32, vgg16 ...")
@click.option("--extractor-weights", default=None, type=NonEmptyPath(dir_okay=False), help=EXTRACTOR_WEIGHTS_HELP)
@click.option("--inception-weights", default=None, type=NonEmptyPath(dir_okay=False),
              help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth (Inception Score)")
@click.option("--n-ref", default=None, type=int, help=N_REF_HELP)
@click.option("--device", default="auto", type=DEVICE, show_default=True)
def samples(path, dataset, out, ref_stats, data_root, fid_extractor, extractor_weights, inception_weights, n_ref,
            device):
    """Sample quality of any generator's images (an .npz with x [and y], a folder of PNGs, a .pt
    tensor): FID, KID, precision/recall, IS, SSIM nearest neighbours and diversity against the
    training split of DATASET; writes OUT/results.json, OUT/tables, OUT/report.html."""
    from bench.pipeline import samples_command

    out = out or Path("runs") / f"samples-{Path(path).stem or 'samples'}"
    res = samples_command.evaluate(path, dataset, out, data_root=data_root, ref_stats=ref_stats,
                              fid_extractor=fid_extractor, inception_weights=inception_weights, n_ref=n_ref,
                              device=device, extractor_weights=extractor_weights)
    width = max(len(k) for k in res.metrics)
    for k, r in res.metrics.items():
        click.echo(f"{k:<{width}}  " + (f"{r.value:.4f}" if r.value is not None else f"null  ({r.reason})"))
    click.echo(f"wrote {out / 'results.json'} in {res.run['seconds']:.1f} s")


@cli.command("ref-stats")
@click.option("--dataset", required=True, help="digits, fashion-mnist, cifar10, cifar100, folder:PATH, npz:PATH")
@click.option("--out", required=True, type=NonEmptyPath(dir_okay=False, path_type=Path), help="output .npz")
@click.option("--split", default="train", show_default=True, type=click.Choice(["train", "test"]))
@click.option("--data-root", default=None, help="directory holding CIFAR / Fashion-MNIST data")
@click.option("--fid-extractor", default="auto", show_default=True,
              help="auto, inception, fid-helper, dinov2-vit-s14, clip-vit-b32, vgg16 ...")
@click.option("--extractor-weights", default=None, type=NonEmptyPath(dir_okay=False), help=EXTRACTOR_WEIGHTS_HELP)
@click.option("--inception-weights", default=None, type=NonEmptyPath(dir_okay=False))
@click.option("--features/--no-features", default=True, show_default=True,
              help="store the reference features (KID and precision/recall need them)")
@click.option("--mu-sigma/--no-mu-sigma", "mu_sigma", default=True, show_default=True,
              help="store mu/sigma (what pytorch-fid and clean-fid read)")
@click.option("--precision", default="float32", show_default=True, type=click.Choice(["float32", "float16"]),
              help="dtype of the stored features")
@click.option("--n-ref", default=None, type=int, help=N_REF_HELP.replace("training", "split's"))
@click.option("--device", default="auto", type=DEVICE, show_default=True)
def ref_stats(dataset, out, split, data_root, fid_extractor, extractor_weights, inception_weights, features, mu_sigma,
              precision, n_ref, device):
    """Write the FID reference statistics (mu, sigma), the features and the extractor's identity
    of a data set's split to OUT (.npz; read by --ref-stats, pytorch-fid and clean-fid)."""
    from bench.core import fileio
    from bench.core.settings import reference_size
    from bench.engines import refstats
    from bench.engines.features import FEATURE_BATCH, ExtractorUnavailable, resolve_extractor
    from bench.inputs import data
    from bench.runtime.execution import Execution, resolve_device

    fileio.check_writable(out)  # before minutes of features, not after them
    ds = data.load(dataset, data_root)
    try:
        ext = resolve_extractor(fid_extractor, inception_weights, extractor_weights)
    except ExtractorUnavailable as e:
        raise BenchError(str(e)) from None
    x = (ds.train if split == "train" else ds.test).subset(reference_size(ds.name, n_ref)).x
    if x.shape[1] not in (1, 3):
        raise BenchError(f"FID features need grey or RGB images; {ds.name} has {x.shape[1]} channels")
    run = Execution(resolve_device(device), FEATURE_BATCH)
    stats, feats, info = refstats.reference_features(x, ext, ds.name, split, run)
    path = refstats.write_file(out, info["key"], stats, feats if features else None, mu_sigma, precision,
                               source=info["cache"])
    click.echo(f"wrote {path} ({len(feats)} {ext.fid_layer}-d features of {ds.name}:{split}, extractor "
               f"{ext.identity}, from {info['cache']}; {path.stat().st_size / 1e6:.1f} MB)")


@cli.command()
def models():
    """List released checkpoints and recipes."""
    from bench.inputs import zoo

    for name_of_zoo in zoo.ZOOS:
        rows = zoo.released_rows(name_of_zoo)
        if not rows:
            continue
        click.echo(f"released checkpoints ({zoo.models_dir() / name_of_zoo}; --model NAME, bench.load(NAME)):")
        for line in zoo.aligned(rows):
            click.echo(f"  {line}")
    click.echo("recipes:")
    for r in zoo.recipe_names():
        click.echo(f"  {r}")


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that it ends as an interrupt does."""


class _Stopped(Exception):
    """An interrupt with its command's own message (``bench train``)."""


def _train_hint(out: Path, e: KeyboardInterrupt) -> str:
    from bench.train.loop import resume_path

    how = "terminated (SIGTERM)" if isinstance(e, _Terminated) else "interrupted"
    if resume_path(out).exists():
        return (f"{how}; the finished epochs are kept in {out} and {resume_path(out).name}: continue with "
                f"the same command and --resume")
    return f"{how} before the first epoch was finished; nothing to resume (train again)"


def _on_sigterm(signum, frame):
    raise _Terminated()


WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)  # errors only a write gives
KEPT = "finished metrics are kept and reused by the next run"


def main(argv=None) -> int:
    """The command line: every failure is one ``error:`` line (exit 2); SIGINT and SIGTERM say what
    is kept (exit 130 and 143)."""
    try:
        before = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: SIGTERM keeps its handler
        before = None
    try:
        return _main(argv)
    finally:
        if before is not None:
            signal.signal(signal.SIGTERM, before)


def _main(argv) -> int:
    try:
        code = cli.main(args=argv, prog_name="bench", standalone_mode=False)
    except _Stopped as e:
        click.echo(str(e), err=True)
        return 143 if str(e).startswith("terminated") else 130
    except BenchError as e:
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    except click.UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `bench`: show the help
            click.echo(e.ctx.get_help() if e.ctx else str(e))
            return 0
        click.echo(f"error: {e.format_message()}" + (f" (see {e.ctx.command_path} --help)" if e.ctx else ""),
                   err=True)
        return 2
    except click.ClickException as e:  # bad file arguments and the like
        click.echo(f"error: {e.format_message()}", err=True)
        return 2
    except (click.exceptions.Abort, KeyboardInterrupt) as e:
        if isinstance(e, _Terminated) or isinstance(e.__cause__ or e.__context__, _Terminated):
            click.echo(f"terminated (SIGTERM); {KEPT}", err=True)
            return 143
        click.echo(f"interrupted; {KEPT}", err=True)
        return 130
    except OSError as e:  # a write no writer mapped (bench.core.errors.CannotWrite): still one line
        if e.errno not in WRITE_ERRNOS:
            raise
        click.echo(f"error: cannot write {e.filename or 'a file'}: {e.strerror or e}", err=True)
        return 2
    return code if isinstance(code, int) else 0  # ctx.exit(N), e.g. 1 from `check`


if __name__ == "__main__":
    sys.exit(main())
