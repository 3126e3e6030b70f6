"""``bench run --model a --model b``: each model into ``OUT/<its stem>``, then one ``bench table``
over them into ``OUT/tables``.  Every model, with every per-model option (``--normalize`` on a file
that records its own normalisation, the data set, the settings), is resolved before the first one
runs, so a bad one fails in seconds, not after minutes of the others; two models of one stem, or a
model whose stem is a name the combined outputs use (``tables``), are refused first of all."""

from __future__ import annotations

import os
import re
from pathlib import Path

from bench.core.errors import BenchError
from bench.core.fileio import check_out
from bench.pipeline import runner
from bench.pipeline.request import RunRequest, resolve
from bench.runtime import distributed
from bench.runtime.execution import resolve_device

TABLES = "tables"  # OUT/tables: the combined tables and report.html
RESERVED = (TABLES,)  # the names under OUT the combined outputs use: no model's folder


def model_stem(spec: str) -> str:
    """The folder name of a model among several (``bench run --model a --model b``): a file's stem,
    else the spec with ``:`` and ``/`` as ``-`` (``py:mod:make`` -> ``py-mod-make``)."""
    if spec.startswith(("py:", "rb:")):
        return re.sub(r"[:/\\]+", "-", spec)
    return Path(spec).stem


def check_stems(models: list[str], out: str | Path) -> list[str]:
    """The models' folder names, or the BenchError naming two models of one stem or a reserved one."""
    stems = [model_stem(m) for m in models]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise BenchError(f"--model: two models would write to the same folder {Path(out) / dup[0]}; "
                         "rename one or run them one at a time")
    for m, s in zip(models, stems, strict=True):
        if s in RESERVED:
            raise BenchError(f"--model {m}: its folder would be {Path(out) / s}, where the combined tables of "
                             f"the models go; rename the file (any stem but {', '.join(RESERVED)})")
    return stems


def resolve_all(models: list[str], suite="all", dataset=None, data_root=None, arch=None, device="auto",
                download=False, settings=None, rb_model_dir=None, **_) -> None:
    """Resolve every model as its run will (``bench.pipeline.request.resolve``: file, data set,
    normalisation, settings, suites) and drop it; the first failure is the error, naming its model."""
    resolve_device(device)
    for m in models:
        try:
            resolve(RunRequest(m, suite, dataset=dataset, data_root=data_root, arch=arch, download=download,
                               settings=settings or {}, rb_model_dir=rb_model_dir))
        except BenchError as e:
            if m in str(e):
                raise
            raise BenchError(f"--model {m}: {e}") from None


def run_many(models: list[str], out: str | Path, name: str | None = None, **kw):
    """Each model into ``out/<model_stem>`` (``runner.run``), then ``bench table`` over them into
    ``out/tables``; returns the ``bench.outputs.table_files.Built`` (None on a torchrun rank other than 0).
    ``name``: each run's row label, suffixed by its stem."""
    from bench.outputs import table_files as tabling

    stems = check_stems(models, out)
    resolve_all(models, **kw)
    if int(os.environ.get("RANK", "0")) == 0:  # torchrun: rank 0 writes OUT (not joined yet here)
        check_out(out)  # OUT writable, OUT/tables no link out of it, before the first model runs
    dirs = [Path(out) / s for s in stems]
    for m, d, s in zip(models, dirs, stems, strict=True):
        runner.run(model=m, out=d, name=f"{name} ({s})" if name else None, **kw)
    if distributed.active() and distributed.rank() != 0:
        return None
    return tabling.build(dirs, Path(out) / TABLES)
