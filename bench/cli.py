"""The ``bench`` command line: parses, calls library functions, prints.

Exit codes: 0 success, 1 regression found by ``check``, 2 bad input or usage (one line).
"""

from __future__ import annotations

import os
import sys
from fractions import Fraction
from pathlib import Path

import click

from bench.errors import BenchError


class _Number(click.ParamType):
    """A float that may be written as a fraction, e.g. 8/255."""

    name = "number"

    def convert(self, value, param, ctx):
        if isinstance(value, float | int):
            return float(value)
        try:
            return float(Fraction(value.strip())) if "/" in value else float(value)
        except (ValueError, ZeroDivisionError):
            self.fail(f"{value!r} is not a number (e.g. 0.1 or 8/255)", param, ctx)


NUMBER = _Number()
DEVICE = click.Choice(["auto", "cpu", "cuda"])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="jeat-bench")
def cli():
    """JEAT-Bench: robustness and generative capability of classifiers read as energy models."""


@cli.command()
@click.option("--model", "model", default=None, help="checkpoint: .safetensors, .pt/.pth (+ --arch), JEM file, "
              "py:module:function, rb:NAME. Default: the released digits JEAT model.")
@click.option("--suite", default="all", show_default=True,
              help="all, or a comma list of robust,calibration,generative,score,memorization,landscape,denoise")
@click.option("--out", default="runs/default", show_default=True, type=click.Path(path_type=Path))
@click.option("--dataset", default=None, help="digits, cifar10, cifar100, folder:PATH, npz:PATH (default: the checkpoint's)")
@click.option("--data-root", default=None, help="directory holding CIFAR data")
@click.option("--download", is_flag=True, help="download CIFAR if missing (needs network)")
@click.option("--arch", default=None, help="architecture of a plain state dict, e.g. wrn-28-10, resnet18")
@click.option("--device", default="auto", type=DEVICE, show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--eps", default=None, type=NUMBER, help="L-inf radius in [0,1] units (default: the checkpoint's; "
              "8/255 for CIFAR, 0.1 for digits)")
@click.option("--n-eval", default=None, type=int, help="evaluation points (first n of the test split; default all)")
@click.option("--n-aa", default=None, type=int, help="AutoAttack points (default: n-eval)")
@click.option("--n-gen", default=None, type=int, help="generated images, balanced over classes")
@click.option("--batch-size", default=None, type=int)
@click.option("--pgd-steps", default=None, type=int)
@click.option("--pgd-step-size", default=None, type=NUMBER, help="default eps/4")
@click.option("--gen-energy", default=None, type=click.Choice(["joint", "ce"]), help="joint: Eq. 17; ce: Eq. 16")
@click.option("--gen-init", default=None, type=click.Choice(["gaussian", "uniform", "buffer"]))
@click.option("--gen-steps", default=None, type=int)
@click.option("--gen-step-size", default=None, type=NUMBER)
@click.option("--gen-noise", default=None, type=NUMBER)
@click.option("--inception-weights", default=None, type=click.Path(dir_okay=False),
              help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth (enables Inception Score offline)")
@click.option("--probes", default=None, type=int, help="Hutchinson probes per point")
@click.option("--exact-trace/--hutchinson", "exact_trace", default=None, help="exact Hessian trace (small inputs)")
@click.option("--channels-last/--no-channels-last", "channels_last", default=None,
              help="fast path: channels-last memory format (default off)")
@click.option("--amp", default=None, type=click.Choice(["off", "bf16"]),
              help="fast path: bf16 autocast for forward passes without gradient (never attack gradients; default off)")
@click.option("--compile/--no-compile", "compile", default=None, help="fast path: torch.compile the network (default off)")
@click.option("--resume/--no-resume", default=True, show_default=True, help="reuse finished metrics in --out")
def run(model, suite, out, dataset, data_root, download, arch, device, resume, **settings):
    """Evaluate a model; writes OUT/results.json, OUT/tables, OUT/figures, OUT/samples."""
    from bench import runner

    if settings.get("inception_weights") and not Path(settings["inception_weights"]).is_file():
        raise BenchError(f"--inception-weights file not found: {settings['inception_weights']}")
    res = runner.run(model=model, suite=suite, out=out, dataset=dataset, data_root=data_root, arch=arch,
                     device=device, resume=resume, download=download, settings=settings)
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 reports
        return
    width = max(len(k) for k in res.metrics) if res.metrics else 0
    for k, r in res.metrics.items():
        val = f"{r.value:.4f}" if r.value is not None else f"null  ({r.reason})"
        click.echo(f"{k:<{width}}  {val}")
    click.echo(f"wrote {Path(out) / 'results.json'} in {res.run['seconds']:.1f} s")


@cli.command()
@click.option("--recipe", required=True, help="recipe name (see `bench models`) or path to a .toml")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="output .safetensors")
@click.option("--epochs", default=None, type=int, help="override the recipe's epochs")
@click.option("--device", default="auto", type=DEVICE, show_default=True)
@click.option("--seed", default=None, type=int, help="default: the recipe's seed")
@click.option("--resume", is_flag=True, help="continue from OUT's resume state, exactly")
@click.option("--data-root", default=None, help="directory holding CIFAR data")
@click.option("--download", is_flag=True, help="download CIFAR if missing (needs network)")
def train(recipe, out, epochs, device, seed, resume, data_root, download):
    """Train a model from a recipe (normal, noise, at, prejeat, jeat, jem).  Under torchrun
    (``torchrun --nproc_per_node=N -m bench train ...``) it trains data-parallel on N processes."""
    from bench import runner
    from bench import train as training

    summary = training.train(recipe, out, epochs=epochs, device=str(runner.resolve_device(device)),
                             seed=seed, resume=resume, data_root=data_root, download=download)
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 reports
        return
    click.echo(" ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, dict | list)))


@cli.command()
@click.argument("dirs", metavar="DIR...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="directory for the tables and report.html")
def table(dirs, out):
    """Tables 1-3 across runs (DIR/results.json), beside the paper's numbers: CSV, LaTeX, Markdown
    and report.html into OUT; the Markdown is printed."""
    from bench import tables

    built = tables.build(dirs, out)
    for t in built.tables:
        click.echo(tables.to_markdown(t))
    if built.report_error:
        click.echo(f"warning: report.html not written: {built.report_error}", err=True)
    click.echo(f"wrote {len(built.paths)} table files" + (f" and {built.report}" if built.report else "")
               + f" to {out}")


@cli.command()
@click.argument("run_dir", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--baseline", required=True, type=click.Path(path_type=Path), help="baseline results.json")
@click.option("--tolerance", "tolerances", multiple=True, metavar="NAME=ABS",
              help="absolute tolerance for one metric, in results.json units (repeatable)")
@click.pass_context
def check(ctx, run_dir, baseline, tolerances):
    """Compare DIR/results.json with a baseline: exit 0 within tolerance, 1 on regression,
    2 when the settings differ or the input is bad."""
    from bench import check as checking

    report = checking.check(run_dir, baseline, tolerances)
    click.echo(report.format())
    if report.exit_code:
        click.echo("regression: " + ", ".join(r.metric for r in report.regressions), err=True)
        ctx.exit(report.exit_code)


@cli.command()
def models():
    """List released checkpoints and recipes."""
    from bench import zoo

    man = zoo.manifest()
    click.echo(f"released checkpoints ({zoo.models_dir() / 'digits'}):")
    for name, e in sorted(man.get("models", man).items()) if isinstance(man, dict) else []:
        if isinstance(e, dict):
            acc, rob = e.get("clean_test_accuracy"), e.get("pgd20_test_accuracy")
            shown = " ".join(f"{k}={v:.4f}" for k, v in (("acc", acc), ("pgd20", rob)) if isinstance(v, float))
            click.echo(f"  {name:<16} method={e.get('method', '?'):<8} {shown}  "
                       f"trained {e.get('training_seconds', '?')} s  sha256={str(e.get('sha256'))[:12]}")
    click.echo("recipes:")
    for r in zoo.recipe_names():
        click.echo(f"  {r}")


def main(argv=None) -> int:
    try:
        code = cli.main(args=argv, prog_name="bench", standalone_mode=False)
    except BenchError as e:
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    except click.UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `bench`: show the help
            click.echo(e.ctx.get_help() if e.ctx else str(e))
            return 0
        click.echo(f"error: {e.format_message()}" + (f" (see bench {e.ctx.info_name} --help)" if e.ctx else ""),
                   err=True)
        return 2
    except click.ClickException as e:  # bad file arguments and the like
        click.echo(f"error: {e.format_message()}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("interrupted; finished metrics are kept and reused by the next run", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("interrupted; finished metrics are kept and reused by the next run", err=True)
        return 130
    return code if isinstance(code, int) else 0  # ctx.exit(N), e.g. 1 from `check`


if __name__ == "__main__":
    sys.exit(main())
