"""The ``bench`` commands that read finished runs: ``table`` (tables across runs), ``check`` (a run
against a baseline, thresholds, another model) and ``compare`` (models on the same points).
``bench.cli`` adds them to the ``bench`` group; exit codes as there (0 ok, 1 regression or unmet
gate, 2 bad input)."""

from __future__ import annotations

from pathlib import Path

import click

from bench.cli_options import NonEmptyPath
from bench.core.errors import BenchError


@click.command()
@click.argument("dirs", metavar="DIR...", nargs=-1, required=True, type=NonEmptyPath(path_type=Path))
@click.option("--out", required=True, type=NonEmptyPath(path_type=Path), help="directory for the tables and report.html")
@click.option("--over-seeds", is_flag=True, help="one row per model over its runs at several seeds (same "
              "checkpoint and settings): the mean, ± the standard deviation over the seeds")
@click.option("--columns", default=None, metavar="LIST", help="comma list of the columns to show, in order: "
              "metric names (accuracy, pgd20, autoattack, ece) or column names; the tables holding them all (else "
              "each holding any) are written")
@click.option("--rows", "rows", multiple=True, metavar="NAME|OLD=NEW", help="the rows to show, in order, each "
              "NAME or OLD=NEW to rename it (a comma list, or repeat the option)")
@click.option("--caption", default=None, help="caption of every table written (the shared data set, threat "
              "model and n, and how bold is decided, are added in LaTeX)")
@click.option("--label", default=None, help="LaTeX \\label (default tab:NAME; with several tables LABEL-NAME)")
@click.option("--with-paper/--without-paper", "with_paper", default=None, help="the paper's rows: all, or none "
              "(default: only beside runs on the paper's data sets, CIFAR-10 and CIFAR-100)")
def table(dirs, out, over_seeds, columns, rows, caption, label, with_paper):
    """Tables across runs (DIR/results.json), beside the paper's numbers where they compare: CSV,
    LaTeX (booktabs), Markdown and report.html into OUT; the Markdown is printed."""
    from bench.outputs import table_files
    from bench.outputs.table_select import Choice

    choice = Choice([c.strip() for c in columns.split(",") if c.strip()] if columns else None, list(rows) or None,
                    caption, label, with_paper)
    built = table_files.build(dirs, out, over_seeds=over_seeds, choice=choice)
    for t in built.tables:
        click.echo(table_files.to_markdown(t))
    if built.report_error:
        click.echo(f"warning: report.html not written: {built.report_error}", err=True)
    click.echo(f"wrote {len(built.paths)} table files" + (f" and {built.report}" if built.report else "")
               + f" to {out}")


@click.command()
@click.argument("run_dir", metavar="DIR", type=NonEmptyPath(path_type=Path))
@click.option("--baseline", type=NonEmptyPath(path_type=Path), help="baseline results.json (optional with --require)")
@click.option("--tolerance", "tolerances", multiple=True, metavar="NAME=ABS",
              help="absolute tolerance for one metric, in results.json units (repeatable); NAME may be "
              "a wildcard, e.g. 'ood_auroc_*=0.01'")
@click.option("--exact", is_flag=True, help="bit for bit (1e-6 relative, no flipped point) where the run's "
              "fingerprint equals the baseline's; the portable paired rules, saying what differs, elsewhere")
@click.option("--statistical", is_flag=True, help="compare as independent samples (3 standard errors): for "
              "runs whose pairing broke, e.g. other fast paths; wide, gross breakage only")
@click.option("--one-sided", is_flag=True, help="a metric moving the way it declares better is 'improved', "
              "not a failure; only the wrong direction fails")
@click.option("--strict", is_flag=True, help="missing and not-checkable metrics fail too (CI: nothing passes "
              "unchecked)")
@click.option("--junit", type=NonEmptyPath(dir_okay=False, path_type=Path), help="write JUnit XML here "
              "(one test case per metric)")
@click.option("--markdown", type=NonEmptyPath(dir_okay=False, path_type=Path), help="append a Markdown "
              "summary here, e.g. $GITHUB_STEP_SUMMARY")
@click.option("--require", "requires", multiple=True, metavar="'METRIC>=X'",
              help="a threshold the run must meet, e.g. 'pgd20>=0.60' or 'ece<=0.10' (repeatable; with or "
              "without --baseline); unmet, missing or null fails")
@click.option("--another-model", "another", is_flag=True, help="DIR evaluates another model than --baseline on "
              "the same evaluation: fail only where it is significantly worse (paired one-sided tests, Holm)")
@click.option("--margin", "margins", multiple=True, metavar="NAME=X", help="--another-model: how much worse "
              "a metric may be before it fails (results.json units; NAME may be a wildcard; default 0)")
@click.option("--alpha", type=float, default=0.05, show_default=True, help="--another-model: test level")
@click.pass_context
def check(ctx, run_dir, baseline, tolerances, exact, statistical, one_sided, strict, junit, markdown,
          requires, another, margins, alpha):
    """Compare DIR/results.json with a baseline: exit 0 within tolerance, 1 on regression (or an
    unmet --require), 2 when the two are not the same evaluation (model, data, settings; with
    --another-model everything but the model) or the input is bad."""
    from bench.outputs import check as checking
    from bench.outputs import gates

    try:
        report = gates.run_check(run_dir, baseline, tolerances, exact=exact, strict=strict, statistical=statistical,
                                 one_sided=one_sided, requires=requires, another=another, margin_items=margins,
                                 alpha=alpha)
    except BenchError as e:  # not compared: CI still gets a file that says why
        click.echo(f"error: {e}", err=True)  # the verdict first, whatever writing the files says
        checking.write_outputs(str(e), junit, markdown, checking.run_label(run_dir), "exact" if exact else "portable")
        ctx.exit(e.exit_code)
    click.echo(report.format())  # the verdict first, then the files (a full disk is named after it)
    if report.exit_code:
        click.echo("regression: " + ", ".join(r.metric for r in report.regressions), err=True)
    checking.write_outputs(report, junit, markdown)
    if report.exit_code:
        ctx.exit(report.exit_code)


@click.command()
@click.argument("run_dirs", metavar="DIR DIR [DIR ...]", nargs=-1, required=True, type=NonEmptyPath(path_type=Path))
@click.option("--metrics", "metrics", multiple=True, metavar="NAMES", help="comma list of metrics (wildcards, "
              "e.g. 'pgd20*,ece'); default: every metric all runs hold")
@click.option("--alpha", type=float, default=0.05, show_default=True, help="level of the Holm-corrected tests")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the paired bootstrap")
@click.option("--markdown", type=NonEmptyPath(dir_okay=False, path_type=Path), help="append Markdown here")
@click.option("--csv", "csv_path", type=NonEmptyPath(dir_okay=False, path_type=Path), help="write CSV here")
@click.option("--latex", type=NonEmptyPath(dir_okay=False, path_type=Path), help="write a LaTeX tabular here")
@click.option("--junit", type=NonEmptyPath(dir_okay=False, path_type=Path), help="write JUnit XML here "
              "(a metric significantly worse than the first run's fails)")
def compare(run_dirs, metrics, alpha, seed, markdown, csv_path, latex, junit):
    """Models evaluated on the same points with the same settings, each against the first: the
    difference per metric, its standard error and a paired test (McNemar, paired mean, paired
    bootstrap, paired DeLong), Holm-corrected.  Exit 0, or 2 when the runs are not the same evaluation."""
    from bench.outputs import compare as comparing
    from bench.outputs import compare_output

    comp = comparing.compare_runs(list(run_dirs), metrics, alpha=alpha, seed=seed)
    click.echo(compare_output.to_text(comp))
    compare_output.write(comp, markdown, csv_path, latex, junit)
