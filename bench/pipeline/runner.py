"""Run suites on a model: resolve the model, data and settings, run every metric group once,
cache each group's results keyed by what its numbers come from (the weights as loaded, the images
of both splits, the group's code and the library versions, and exactly the settings it declares),
and write results.json atomically after every group, so an interrupted run loses nothing finished."""

from __future__ import annotations

import contextlib
import datetime as _dt
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import torch

from bench.core import progress
from bench.core.fileio import check_out
from bench.core.results import Results, platform_record
from bench.inputs import checkpoints, data
from bench.metrics import Context, Result, registry
from bench.outputs import report, table_files
from bench.pipeline import cache_keys, compute, kept_groups, outlock
from bench.pipeline import plan as runplan
from bench.pipeline.identity import data_record, versions  # noqa: F401  (re-exported: tests, samples_command)
from bench.pipeline.request import (  # noqa: F401  (resolve_settings, validate_settings: re-exported for tests)
    RunRequest,
    resolve,
    resolve_settings,
    train_used,
    validate_settings,
)
from bench.runtime import distributed, fastpath, sanity
from bench.runtime.execution import resolve_device


def _announce(loaded: checkpoints.Loaded, ds: data.Dataset, record: dict, log) -> None:
    """The run's console lines on what is evaluated: normalisation and its source, and warnings."""
    norm = loaded.meta.get("normalization") or {}
    if norm:
        log(f"normalisation: mean {_vals(norm['mean'])} std {_vals(norm['std'])} (from {norm['source']})")
        if norm.get("warning"):
            log(f"warning: {norm['warning']}")
    if record["train_is_test"]:
        log(f"warning: data set {ds.name}: {data.TRAIN_IS_TEST}; the metrics comparing with the training set "
            "(FID, SSIM neighbours) are refused (null)")
    if record["official_md5"] is False:
        log(f"warning: the {ds.name} files under {ds.info.get('root')} are not the official release (md5 differs)")


def _vals(v: list[float]) -> str:
    return "[" + ", ".join(f"{x:.4g}" for x in v) + "]"


def run(model: str | None = None, suite: str = "all", out: str | Path = "runs/default",
        dataset: str | None = None, data_root: str | None = None, arch: str | None = None,
        device: str = "auto", resume: bool = True, download: bool = False,
        settings: dict | None = None, log=progress.say, name: str | None = None,
        rb_model_dir: str | Path | None = None, plan_only: bool = False) -> Results | None:
    """Run the suites on the model into ``out`` (``run_request`` of these arguments as one
    ``RunRequest``).  ``name``: the run's row label in tables (``run.name``), no setting: it keys
    no cache.  ``rb_model_dir`` (``--rb-model-dir``): the folder of ``rb:NAME`` files in
    RobustBench's layout (``bench.inputs.rb_zoo``), no setting either: the weights' digest
    identifies the model.  ``plan_only`` (``--plan``): the run's plan alone, touching nothing
    under ``out`` (-> None)."""
    return run_request(RunRequest(model, suite, Path(out), dataset, data_root, arch, device, resume, download,
                                  settings or {}, log, name, rb_model_dir, plan_only))


def run_request(request: RunRequest) -> Results | None:
    """Carry out one run: resolve it and take ``out/.bench.lock`` (``_prepare``; held to the end:
    a second run into the same folder stops at once, ``bench.pipeline.outlock``), print the run's
    plan (``bench.pipeline.plan``) before the first group, then compute or reuse every group and
    write the tables, results.json and report.html (None with ``plan_only``)."""
    with contextlib.ExitStack() as lock:
        plan = _prepare(request, lock)
        if plan.main:
            cached = {g.name for g in plan.groups
                      if _cache_entry(plan, g, *_cache_path(plan, g), request.resume) is not None}
            runplan.show(plan.groups, plan.ctx, plan.s, plan.probe, cached, plan.log)
        if request.plan_only:
            return None
        _run_groups(plan, request.resume)
        return _finish(plan)


@dataclass
class _Plan:
    """One run, resolved: where it writes, its groups, the model and data, its settings, the
    Context its groups see, the results record being filled, and what keys each group's cache."""

    out: Path
    groups: list
    s: dict
    ctx: Context
    res: Results
    model_id: str
    dataset: str
    identity: dict
    code: dict
    main: bool
    log: object
    started: float
    probe: runplan.Probe | None = None


def _prepare(request: RunRequest, lock: contextlib.ExitStack) -> _Plan:
    """Resolve the request (``bench.pipeline.request.resolve``); take the --out lock; check the
    model; start the results record with what an earlier run in --out adds to it
    (``bench.pipeline.kept_groups``); make the run's Context (read-only settings)."""
    started, out, log, name = time.time(), request.out, request.log, request.name
    dev = distributed.init(resolve_device(request.device))
    r = resolve(request)
    suite_names, groups, loaded, ds, s = r.suite_names, list(r.groups), r.loaded, r.data, r.settings
    main = distributed.is_main()
    if main and not request.plan_only:
        check_out(out)
        lock.enter_context(outlock.held(out, log=log))  # rank 0 only: the other ranks write nothing there
    elif not main:  # other torchrun ranks write nothing under --out: their figures go to a scratch folder
        log = _quiet
        out = Path(tempfile.mkdtemp(prefix=f"bench-rank{distributed.rank()}-"))
    net = fastpath.apply(loaded.model.to(dev).eval(), fastpath.FastPath.from_settings(s))
    probe = runplan.model_probe(net, ds, s, dev, groups, log, loaded.weights_sha256)  # may lower s["batch_size"] to the free memory
    torch.manual_seed(s["seed"])  # after the probe: whatever random numbers it drew move no metric

    data_rec = data_record(ds)
    ds.info["train_is_test"] = data_rec["train_is_test"]  # identical splits count too
    _announce(loaded, ds, data_rec, log)
    vers = versions()
    memo: dict = {}
    code = {g.name: cache_keys.code_sha256(g.fn.__module__, memo) for g in groups}
    identity = {"weights": loaded.weights_sha256, "data": [data_rec["train_sha256"], data_rec["test_sha256"]],
                "versions": vers}
    now = {"weights_sha256": loaded.weights_sha256, "data": identity["data"], "dataset": ds.name,
           "versions": vers, "settings": s, "code": lambda g: cache_keys.code_sha256(g.fn.__module__, memo)}
    kept = distributed.on_main(  # rank 0 reads --out; every rank refuses alike
        lambda: kept_groups.keep(kept_groups.earlier(out, log), {g.name for g in groups}, now, out, log))
    # a kept group whose stored metrics fail the cache's rules (edited by hand) is computed again
    again = [g for g in (registry.load_all()[n].for_settings(s) for n in kept.recompute) if g.metrics]
    groups += again
    code.update({g.name: cache_keys.code_sha256(g.fn.__module__, memo) for g in again})
    suite_names = list(dict.fromkeys([*suite_names, *(g.suite for g in again)]))
    # the run's settings and, for the groups (bench.metrics.registry.IDENTITY_KEYS), what they evaluate
    s_run = dict(s, model_sha256=loaded.sha256, weights_sha256=loaded.weights_sha256,
                 data_sha256=identity["data"],
                 generation_code_sha256=cache_keys.code_sha256("bench.engines.generation", memo))  # keys samples.npz
    checks = sanity.check_model(net, ds.test.x[:sanity.N_IMAGES].to(dev), log)  # RNG state kept
    ctx = Context(net, ds, MappingProxyType(s_run), dev, out, progress=progress.bar, replay_buffer=loaded.replay_buffer,
                  data_root=request.data_root, train_used=train_used(loaded), model_name=str(name or loaded.label))
    if not request.plan_only:
        (out / "cache").mkdir(exist_ok=True)
    plat = platform_record(dev)
    res = Results(loaded.describe() | {"dataset": ds.name, "num_classes": ds.num_classes}, {
        "suites": list(dict.fromkeys([*kept.suites, *suite_names])), "seed": s["seed"], "device": str(dev),
        "versions": vers, "data": data_rec, "code_sha256": code, "platform": plat,
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "seconds": None,
        "config": s, "model_checks": checks, "cache": {"hits": [], "computed": []}, "groups": {}})
    _add_kept(res, kept, now)
    if distributed.active():
        res.run["processes"] = distributed.world()
    if name:
        res.run["name"] = str(name)
    return _Plan(out, groups, s, ctx, res, loaded.sha256 or loaded.path, ds.name, identity, code, main, log, started, probe)


def _add_kept(res: Results, kept: kept_groups.Kept, now: dict) -> None:
    """The earlier run's groups this run keeps: their metrics, records and code digests."""
    if not kept.groups:
        return
    res.metrics.update(kept.metrics)
    for g, rec in kept.groups.items():
        if rec.get("platform") == res.run["platform"]:
            rec = {k: v for k, v in rec.items() if k != "platform"}
        res.run["groups"][g] = rec
        res.run["code_sha256"][g] = now["code"](registry.load_all()[g])
    res.run["cache"]["kept"] = list(kept.groups)


def _run_groups(plan: _Plan, resume: bool) -> None:
    """Each group from its cache or computed, results.json written after every one."""
    res, ctx, log = plan.res, plan.ctx, plan.log
    for g in plan.groups:
        path, key = _cache_path(plan, g)
        entry = _cache_entry(plan, g, path, key, resume, log)
        entry = distributed.broadcast(entry)  # every rank takes the same path through the groups
        if entry is not None:
            cached, computed_on = entry
            res.metrics.update(cached)
            res.run["cache"]["hits"].append(g.name)
            res.run["groups"][g.name] = _group_record(g, computed_on or res.run["platform"], True, res.run["platform"],
                                                      res.metrics)
            log(f"[{g.suite}] {g.name}: cached")
        else:
            t0 = time.time()
            log(f"[{g.suite}] {g.name}: running")
            computed, cacheable = compute.compute(g, ctx)
            for r in computed.values():
                r.seconds = r.seconds or time.time() - t0
            if cacheable and plan.main:  # a transient fault (out of memory) is retried by the next run
                cache_keys.write_cache(path, g, key, computed, res.run["platform"])
            res.metrics.update(computed)
            res.run["groups"][g.name] = _group_record(g, res.run["platform"], False, res.run["platform"], res.metrics)
            res.run["cache"]["computed"].append(g.name)
            log(f"[{g.suite}] {g.name}: " + ", ".join(_fmt(k, v) for k, v in computed.items()))
        flags = sanity.run_flags({k: res.metrics[k] for k in g.metrics if k in res.metrics})
        for f in flags:
            log(f"flag {f['flag']} ({f['metric']}): {f['message']}")
        res.run["flags"] = res.run.get("flags", []) + flags
        res.run["seconds"] = round(time.time() - plan.started, 2)
        if plan.main:
            res.write(plan.out / "results.json")


def _cache_path(plan: _Plan, g) -> tuple[Path, str]:
    inputs = g.input_digests(plan.ctx)  # what it reads beyond the settings (OOD images, FID files)
    key = cache_keys.cache_key(g, plan.model_id, plan.dataset, plan.s, dict(plan.identity, code=plan.code[g.name])
                               | ({"inputs": inputs} if inputs is not None else {}))
    return plan.out / "cache" / f"{g.name}-{key}.json", key


def _cache_entry(plan: _Plan, g, path: Path, key: str, resume: bool, log=None):
    """The group's cached (metrics, platform), or None (also when its figure files are missing)."""
    entry = cache_keys.read_cache(path, g, key) if resume and plan.main else None
    missing = report.missing_figures(plan.out, entry[0]) if entry is not None else []
    if missing:  # the cached numbers without their figures: not a complete hit, computed again
        if log:
            log(f"[{g.suite}] {g.name}: cached, but its figure file(s) {', '.join(missing)} are missing: recomputing")
        return None
    return entry


def _finish(plan: _Plan) -> Results:
    """Rank 0 writes the tables, results.json and report.html; the other ranks drop their scratch."""
    if not plan.main:
        shutil.rmtree(plan.out, ignore_errors=True)
        distributed.close()
        return plan.res
    plan.res.run["seconds"] = round(time.time() - plan.started, 2)
    table_files.write_run_outputs(plan.res, plan.out, plan.log)
    distributed.close()
    return plan.res


def _group_record(g, computed_on: dict, cached: bool, run_platform: dict, metrics: dict[str, Result]) -> dict:
    """results.json's ``run.groups[name]``: a finished group, its suite and metrics, the digest of
    those metrics as results.json holds them (a later run into the same --out keeps the group only
    while they match it: ``kept_groups``), and the platform its numbers were computed on where that is
    not the run's ``platform`` (a cached group keeps the one it was computed on, not this process's:
    ``bench check --exact`` compares each metric's own)."""
    digest = cache_keys.metrics_digest(cache_keys.stored({m: metrics[m] for m in g.metrics}))
    rec = {"suite": g.suite, "metrics": list(g.metrics), "cached": cached, "digest": digest}
    if computed_on != run_platform:
        rec["platform"] = computed_on
    return rec


def _quiet(message: str) -> None:
    pass


def _fmt(name: str, r: Result) -> str:
    return f"{name}={r.value:.4g}" if r.value is not None else f"{name}=null ({r.reason})"
