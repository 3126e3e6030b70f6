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
N_REF_HELP = "FID/KID/precision-recall reference: the first N training images (default: all; 2000 for Fashion-MNIST)"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="jeat-bench")
def cli():
    """JEAT-Bench: robustness and generative capability of classifiers read as energy models."""


@cli.command()
@click.option("--model", "model", default=None, help="checkpoint: .safetensors, .pt/.pth (+ --arch), JEM file, "
              "py:module:function, rb:NAME. Default: the released digits JEAT model.")
@click.option("--suite", default="all", show_default=True,
              help="all, or a comma list of robust,calibration,generative,score,memorization,landscape,denoise,ood")
@click.option("--out", default="runs/default", show_default=True, type=click.Path(path_type=Path))
@click.option("--dataset", default=None, help="digits, cifar10, cifar100, folder:PATH, npz:PATH (default: the checkpoint's)")
@click.option("--data-root", default=None, help="directory holding CIFAR data")
@click.option("--download", is_flag=True, help="download CIFAR if missing (needs network)")
@click.option("--arch", default=None, help="architecture of a plain state dict, e.g. wrn-28-10, resnet18")
@click.option("--normalize", default=None, metavar="PRESET|M/S",
              help="input normalisation of a foreign model: cifar10, cifar100, imagenet, none (0/1), half "
                   "(0.5/0.5), or MEANS/STDS e.g. 0.4914,0.4822,0.4465/0.2470,0.2435,0.2616 (default: the "
                   "checkpoint's; JEM's 0.5/0.5; else mean 0, std 1 with a warning for plain state dicts)")
@click.option("--device", default="auto", type=DEVICE, show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--norm", default=None, type=click.Choice(["Linf", "L2"]),
              help="threat model of PGD, FGSM (FGM under L2) and AutoAttack (default Linf)")
@click.option("--eps", default=None, type=NUMBER, help="attack radius in [0,1] pixel units (default: the checkpoint's; "
              "L-inf 8/255 for CIFAR, 0.1 for digits; L2 0.5 for CIFAR and digits, 1.5 for Fashion-MNIST)")
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
@click.option("--ref-stats", "ref_stats", default=None, type=click.Path(dir_okay=False),
              help="FID/KID/PR reference statistics file (bench ref-stats) instead of the training split's")
@click.option("--n-ref", default=None, type=int, help=N_REF_HELP)
@click.option("--probes", default=None, type=int, help="Hutchinson probes per point")
@click.option("--exact-trace/--hutchinson", "exact_trace", default=None, help="exact Hessian trace (small inputs)")
@click.option("--fisher-space", default=None, type=click.Choice(["pixel", "model"]),
              help="JFS/MFS derivatives w.r.t. the [0,1] image (pixel, default) or the network's normalised "
                   "input (model: the paper's convention; differs by 1/s^2)")
@click.option("--max-diverged", default=None, type=NUMBER,
              help="IS/FID are null above this fraction of diverged SGLD chains (default 0.1)")
@click.option("--denoise-label", default=None, type=click.Choice(["predicted", "oracle"]),
              help="label of the denoising energy E(x, y): the model's prediction on the noisy image "
                   "(default) or the true label (oracle)")
@click.option("--channels-last/--no-channels-last", "channels_last", default=None,
              help="fast path: channels-last memory format (default off)")
@click.option("--amp", default=None, type=click.Choice(["off", "bf16"]),
              help="fast path: bf16 autocast for forward passes without gradient (never attack gradients; default off)")
@click.option("--compile/--no-compile", "compile", default=None, help="fast path: torch.compile the network (default off)")
@click.option("--ood", default=None, callback=lambda c, p, v: None if v is None else ",".join(
              s.strip() for s in v.split(",") if s.strip()),
              help="OOD sets for --suite ood, comma list: uniform, gaussian, constant, inverted, vflip, interp, "
              "digits, fashion-mnist, cifar10, cifar100, svhn, npz:PATH, folder:PATH (default uniform,interp)")
@click.option("--n-ood", default=None, type=int, help="points per OOD set (default: n-eval)")
@click.option("--ood-scores", default=None, help="OOD scores, comma list of px, py, pxgrad (default all three)")
@click.option("--resume/--no-resume", default=True, show_default=True, help="reuse finished metrics in --out")
def run(model, suite, out, dataset, data_root, download, arch, device, resume, **settings):
    """Evaluate a model; writes OUT/results.json, OUT/tables, OUT/figures, OUT/samples."""
    from bench import runner

    if settings.get("inception_weights") and not Path(settings["inception_weights"]).is_file():
        raise BenchError(f"--inception-weights file not found: {settings['inception_weights']}")
    if settings.get("ref_stats") and not Path(settings["ref_stats"]).is_file():
        raise BenchError(f"--ref-stats file not found: {settings['ref_stats']}")
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
@click.option("--exact", is_flag=True, help="same platform and versions as the baseline: every metric must "
              "match to 1e-6 relative (refused, exit 2, on another platform)")
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), help="write JUnit XML here "
              "(one test case per metric)")
@click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path), help="append a Markdown "
              "summary here, e.g. $GITHUB_STEP_SUMMARY")
@click.pass_context
def check(ctx, run_dir, baseline, tolerances, exact, junit, markdown):
    """Compare DIR/results.json with a baseline: exit 0 within tolerance, 1 on regression,
    2 when the settings (or, with --exact, the platform) differ or the input is bad."""
    from bench import check as checking

    try:
        report = checking.check(run_dir, baseline, tolerances, exact=exact)
    except BenchError as e:  # not compared: CI still gets a file that says why
        where = run_dir.parent if run_dir.name == "results.json" else run_dir
        checking.write_outputs(str(e), junit, markdown, where.name or "run", "exact" if exact else "statistical")
        raise
    checking.write_outputs(report, junit, markdown)
    click.echo(report.format())
    if report.exit_code:
        click.echo("regression: " + ", ".join(r.metric for r in report.regressions), err=True)
        ctx.exit(report.exit_code)


@cli.command()
@click.argument("path", metavar="PATH", type=click.Path(path_type=Path))
@click.option("--dataset", required=True, help="the data set whose training split is the reference: digits, "
              "fashion-mnist, cifar10, cifar100, folder:PATH, npz:PATH")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="default: runs/samples-<PATH name>")
@click.option("--ref-stats", "ref_stats", default=None, type=click.Path(dir_okay=False),
              help="reference statistics file (bench ref-stats) instead of the training split's")
@click.option("--data-root", default=None, help="directory holding CIFAR / Fashion-MNIST data")
@click.option("--fid-extractor", default="auto", show_default=True, help="auto, inception, fid-helper")
@click.option("--inception-weights", default=None, type=click.Path(dir_okay=False),
              help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth (Inception Score)")
@click.option("--n-ref", default=None, type=int, help=N_REF_HELP)
@click.option("--device", default="auto", type=DEVICE, show_default=True)
def samples(path, dataset, out, ref_stats, data_root, fid_extractor, inception_weights, n_ref, device):
    """Sample quality of any generator's images (an .npz with x [and y], a folder of PNGs, a .pt
    tensor): FID, KID, precision/recall, IS, SSIM nearest neighbours and diversity against the
    training split of DATASET; writes OUT/results.json, OUT/tables, OUT/report.html."""
    from bench import samples_io

    out = out or Path("runs") / f"samples-{Path(path).stem or 'samples'}"
    res = samples_io.evaluate(path, dataset, out, data_root=data_root, ref_stats=ref_stats,
                              fid_extractor=fid_extractor, inception_weights=inception_weights, n_ref=n_ref,
                              device=device)
    width = max(len(k) for k in res.metrics)
    for k, r in res.metrics.items():
        click.echo(f"{k:<{width}}  " + (f"{r.value:.4f}" if r.value is not None else f"null  ({r.reason})"))
    click.echo(f"wrote {out / 'results.json'} in {res.run['seconds']:.1f} s")


@cli.command("ref-stats")
@click.option("--dataset", required=True, help="digits, fashion-mnist, cifar10, cifar100, folder:PATH, npz:PATH")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="output .npz")
@click.option("--split", default="train", show_default=True, type=click.Choice(["train", "test"]))
@click.option("--data-root", default=None, help="directory holding CIFAR / Fashion-MNIST data")
@click.option("--fid-extractor", default="auto", show_default=True, help="auto, inception, fid-helper")
@click.option("--inception-weights", default=None, type=click.Path(dir_okay=False))
@click.option("--features/--no-features", default=True, show_default=True,
              help="store the reference features (KID and precision/recall need them)")
@click.option("--mu-sigma/--no-mu-sigma", "mu_sigma", default=True, show_default=True,
              help="store mu/sigma (what pytorch-fid and clean-fid read)")
@click.option("--precision", default="float32", show_default=True, type=click.Choice(["float32", "float16"]),
              help="dtype of the stored features")
@click.option("--n-ref", default=None, type=int, help=N_REF_HELP.replace("training", "split's"))
@click.option("--device", default="auto", type=DEVICE, show_default=True)
def ref_stats(dataset, out, split, data_root, fid_extractor, inception_weights, features, mu_sigma, precision, n_ref,
              device):
    """Write the FID reference statistics (mu, sigma), the features and the extractor's identity
    of a data set's split to OUT (.npz; read by --ref-stats, pytorch-fid and clean-fid)."""
    from bench import data, refstats, runner
    from bench.features import ExtractorUnavailable, resolve_extractor
    from bench.settings import reference_size

    ds = data.load(dataset, data_root)
    try:
        ext = resolve_extractor(fid_extractor, inception_weights)
    except ExtractorUnavailable as e:
        raise BenchError(str(e)) from None
    x = (ds.train if split == "train" else ds.test).subset(reference_size(ds.name, n_ref)).x
    if x.shape[1] not in (1, 3):
        raise BenchError(f"FID features need grey or RGB images; {ds.name} has {x.shape[1]} channels")
    stats, feats, info = refstats.reference_features(x, ext, ds.name, split, runner.resolve_device(device))
    path = refstats.write_file(out, info["key"], stats, feats if features else None, mu_sigma, precision,
                               source=info["cache"])
    click.echo(f"wrote {path} ({len(feats)} {ext.fid_layer}-d features of {ds.name}:{split}, extractor "
               f"{ext.identity}, from {info['cache']}; {path.stat().st_size / 1e6:.1f} MB)")


@cli.command()
def models():
    """List released checkpoints and recipes."""
    from bench import zoo

    for name_of_zoo in zoo.ZOOS:
        man = zoo.manifest(name_of_zoo)
        if not man:
            continue
        click.echo(f"released checkpoints ({zoo.models_dir() / name_of_zoo}; --model NAME):")
        for name, e in sorted(man.get("models", {}).items()):
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
