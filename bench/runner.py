"""Run suites on a model: resolve the model, data and settings, run every metric group once,
cache each group's results keyed by what its numbers come from (the weights as loaded, the images
of both splits, the group's code and the library versions, and exactly the settings it declares),
and write results.json atomically after every group, so an interrupted run loses nothing finished."""

from __future__ import annotations

import ast
import datetime as _dt
import hashlib
import importlib.util
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from bench import __version__, checkpoints, data, distributed, fastpath, progress, suites, zoo
from bench.errors import BenchError
from bench.metrics import Context, Group, Result
from bench.results import Results, platform_record, write_json
from bench.settings import DEFAULTS, Norm, complete, dataset_defaults, validate


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError("--device cuda asked for, but no CUDA device is available")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise BenchError(f"unknown device {device!r}; expected auto, cpu or cuda")
    return torch.device(device)


def resolve_model(spec: str | None, dataset: str | None, data_root, arch, download=False, normalize=None):
    """-> (Loaded, Dataset).  Own files name their data set; foreign ones need --dataset."""
    spec = zoo.resolve_spec(spec) if spec else str(zoo.released_path())
    meta = _peek_meta(spec)
    name = dataset or (meta or {}).get("dataset")
    if name is None:
        if not spec.startswith(("py:", "rb:")):
            checkpoints.load(spec, arch=arch)  # a missing or unreadable file says so first
        raise BenchError(f"{spec}: the checkpoint does not record its data set; pass --dataset")
    ds = data.load(name, data_root, download)
    if len(ds.test) == 0 or len(ds.train) == 0:
        raise BenchError(f"data set {name} is empty")
    loaded = checkpoints.load(spec, arch=arch, num_classes=ds.num_classes, input_shape=ds.input_shape,
                              normalize=normalize)
    check_compatible(loaded, ds)
    loaded.weights_sha256 = checkpoints.weights_sha256(loaded.model)  # lazy modules are initialised now
    return loaded, ds


def _peek_meta(spec: str) -> dict | None:
    p = Path(spec)
    if spec.startswith(("py:", "rb:")) or not p.is_file() or p.suffix != ".safetensors":
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            return json.loads((f.metadata() or {}).get("bench", "null"))
    except Exception:
        return None  # checkpoints.load gives the precise error


def check_compatible(loaded: checkpoints.Loaded, ds: data.Dataset) -> None:
    m = loaded.meta
    if m.get("num_classes") not in (None, ds.num_classes):
        raise BenchError(f"model has {m['num_classes']} classes but data set {ds.name} has {ds.num_classes}")
    shape = tuple(m.get("input_shape") or ())
    if shape and shape[0] != ds.input_shape[0]:
        raise BenchError(f"model takes {shape[0]}-channel images but {ds.name} has {ds.input_shape[0]} channels")
    if shape and m.get("source_format") is None and shape != ds.input_shape:
        raise BenchError(f"model was trained on {shape} images but {ds.name} has {ds.input_shape}")
    try:
        with torch.no_grad():
            out = loaded.model.logits(ds.test.x[:2])
    except RuntimeError as e:
        raise BenchError(f"model does not accept {ds.name} images of shape {ds.input_shape}: {str(e)[:150]}") from None
    if out.ndim != 2 or out.shape[1] != ds.num_classes:
        raise BenchError(f"model outputs shape {tuple(out.shape)}, expected (N, {ds.num_classes})")


def resolve_settings(overrides: dict, loaded: checkpoints.Loaded, ds: data.Dataset) -> dict:
    s = dict(DEFAULTS)
    s.update(dataset_defaults(ds.name))
    tm = loaded.meta.get("threat_model") or {}
    if tm.get("eps") is not None and loaded.meta.get("dataset") == ds.name and tm.get("norm", "Linf") == "Linf":
        s["eps"] = float(tm["eps"])
    linf_eps = s["eps"]  # the landscape's default radius stays L-inf sized under --norm L2
    if overrides.get("norm") not in (None, "Linf"):  # the eps default follows the norm
        s["eps"] = dataset_defaults(ds.name, overrides["norm"]).get("eps", s["eps"])
        if tm.get("eps") is not None and loaded.meta.get("dataset") == ds.name and tm.get("norm") == overrides["norm"]:
            s["eps"] = float(tm["eps"])
    s.update({k: v for k, v in overrides.items() if v is not None})
    validate_settings(s, ds.input_shape)
    return complete(s, linf_eps=s["eps"] if s["norm"] == Norm.LINF else linf_eps)


def validate_settings(s: dict, input_shape=None) -> None:
    """Every setting against its declaration (``settings.validate``) and the fast paths."""
    validate(s, input_shape)
    fastpath.FastPath.from_settings(s)  # an unknown amp mode is an error


def cache_key(group: Group, model_id: str, dataset: str, settings: dict, identity: dict | None = None) -> str:
    """The cache key of one group: its name, the model, the data set and its settings, and the
    ``identity`` of what it evaluates: the weights digest, the digests of both splits, the group's
    code digest and the library versions (see ``run``)."""
    names = sorted(set(group.settings) | set(fastpath.SETTINGS))  # fast paths may move any number
    keyed = {"group": group.name, "model": model_id, "dataset": dataset, "bench": __version__,
             "settings": {k: settings.get(k) for k in names}, "identity": identity}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:20]


def code_sha256(module: str, memo: dict | None = None) -> str:
    """sha256 of the source of ``module`` and of every ``bench`` module it imports, directly or
    through others, at top level or inside functions: the code a metric group's numbers come from."""
    memo = {} if memo is None else memo
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name not in memo:
            memo[name] = _module_source(name)
        todo += [m for m in memo[name][1] if m not in seen]
    h = hashlib.sha256()
    for name in sorted(seen):
        h.update(f"{name}|{len(memo[name][0])}|".encode())
        h.update(memo[name][0])
    return h.hexdigest()


def _module_source(name: str) -> tuple[bytes, list[str]]:
    """(source bytes, the bench modules it imports) of a module; no source: (b"", [])."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return b"", []
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return b"", []
    src = Path(spec.origin).read_bytes()
    package = name if spec.submodule_search_locations is not None else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) \
                if node.level else node.module or ""
            found += [base] + [f"{base}.{a.name}" for a in node.names]
    return src, sorted({m for m in found if (m == "bench" or m.startswith("bench.")) and _is_module(m)})


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def data_record(ds: data.Dataset) -> dict:
    """``run.data`` of results.json: the digests of the splits actually evaluated (whatever
    --dataset and --data-root say), their sizes, whether they are the same images, and for CIFAR
    whether the files are the official release (md5; null for other data sets)."""
    train, test = data.split_sha256(ds.train), data.split_sha256(ds.test)
    return {"name": ds.name, "train_sha256": train, "test_sha256": test, "n_train": len(ds.train),
            "n_test": len(ds.test), "train_is_test": ds.train_is_test or train == test,
            "official_md5": ds.info.get("official_md5")}


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


def _check_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise BenchError(f"cannot write to --out {out}: {e.strerror or e}") from None


def versions() -> dict:
    import numpy

    v = {"bench": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
         "python": platform.python_version()}
    for mod in ("torchvision", "torch_fidelity", "pyautoattack", "skimage"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception:
            v[mod] = None
    return v


def run(model: str | None = None, suite: str = "all", out: str | Path = "runs/default",
        dataset: str | None = None, data_root: str | None = None, arch: str | None = None,
        device: str = "auto", resume: bool = True, download: bool = False,
        settings: dict | None = None, log=progress.say) -> Results:
    started = time.time()
    out = Path(out)
    suite_names = suites.resolve(suite)
    groups = suites.groups_for(suite_names)
    dev = distributed.init(resolve_device(device))
    loaded, ds = resolve_model(model, dataset, data_root, arch, download, (settings or {}).get("normalize"))
    s = resolve_settings(settings or {}, loaded, ds)
    # metric names that depend on the settings (the OOD group: one per --ood set) are fixed here,
    # before any cache is read (bench.metrics.Group.for_settings); a bad --ood fails here, early
    groups = [g.for_settings(s) for g in groups]
    main = distributed.is_main()
    if main:
        _check_out(out)
    else:  # other torchrun ranks write nothing under --out: their figures go to a scratch folder
        log = _quiet
        out = Path(tempfile.mkdtemp(prefix=f"bench-rank{distributed.rank()}-"))
    torch.manual_seed(s["seed"])

    model_id = loaded.sha256 or loaded.path
    data_rec = data_record(ds)
    ds.info["train_is_test"] = data_rec["train_is_test"]  # identical splits count too
    _announce(loaded, ds, data_rec, log)
    vers = versions()
    memo: dict = {}
    code = {g.name: code_sha256(g.fn.__module__, memo) for g in groups}
    identity = {"weights": loaded.weights_sha256, "data": [data_rec["train_sha256"], data_rec["test_sha256"]],
                "versions": vers}
    s_run = dict(s, model_sha256=loaded.sha256, weights_sha256=loaded.weights_sha256,
                 data_sha256=identity["data"],
                 generation_code_sha256=code_sha256("bench.generation", memo))  # keys samples.npz
    model = fastpath.apply(loaded.model.to(dev).eval(), fastpath.FastPath.from_settings(s))
    ctx = Context(model, ds, s_run, dev, out, progress=progress.bar,
                  replay_buffer=loaded.replay_buffer, data_root=data_root)
    cache_dir = out / "cache"
    cache_dir.mkdir(exist_ok=True)
    res = Results(loaded.describe() | {"dataset": ds.name, "num_classes": ds.num_classes}, {
        "suites": suite_names, "seed": s["seed"], "device": str(dev), "versions": vers, "data": data_rec,
        "code_sha256": code,
        "platform": platform_record(dev),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "seconds": None,
        "config": s, "cache": {"hits": [], "computed": []}})
    if distributed.active():
        res.run["processes"] = distributed.world()
    for g in groups:
        key = cache_key(g, model_id, ds.name, s, dict(identity, code=code[g.name]))
        path = cache_dir / f"{g.name}-{key}.json"
        cached = _read_cache(path, g) if resume and main else None
        cached = distributed.broadcast(cached)  # every rank takes the same path through the groups
        if cached is not None:
            res.metrics.update(cached)
            res.run["cache"]["hits"].append(g.name)
            log(f"[{g.suite}] {g.name}: cached")
        else:
            t0 = time.time()
            log(f"[{g.suite}] {g.name}: running")
            computed, cacheable = _compute_distributed(g, ctx)
            for r in computed.values():
                r.seconds = r.seconds or time.time() - t0
            if cacheable and main:  # a transient fault (out of memory) is retried by the next run
                write_json(path, {"key": key, "group": g.name,
                                  "metrics": {k: v.to_json() for k, v in computed.items()}})
            res.metrics.update(computed)
            res.run["cache"]["computed"].append(g.name)
            log(f"[{g.suite}] {g.name}: " + ", ".join(_fmt(k, v) for k, v in computed.items()))
        res.run["seconds"] = round(time.time() - started, 2)
        if main:
            res.write(out / "results.json")
    if not main:
        shutil.rmtree(out, ignore_errors=True)
        distributed.close()
        return res
    _write_outputs(res, out, log)
    res.run["seconds"] = round(time.time() - started, 2)
    res.write(out / "results.json")
    try:  # after results.json is written: a failing report page never loses results
        from bench import report
        report.write_run_report(res, out)
    except Exception as e:
        log(f"report.html not written: {type(e).__name__}: {e}")
    distributed.close()
    return res


def _quiet(message: str) -> None:
    pass


def _compute_distributed(g: Group, ctx: Context) -> tuple[dict[str, Result], bool]:
    """``_compute`` in one process; under torchrun a sharded group runs on every rank (each on its
    share, results gathered), any other group on rank 0 with its results broadcast.  Groups on
    generated images first make the generated set together (sharded over chain blocks)."""
    if not distributed.active():
        return _compute_halving(g, ctx)
    if "generated" in g.needs:
        from bench.generation import generated

        generated(ctx)
    if g.sharded:
        ctx.sharded = True
        try:
            return _compute(g, ctx)
        finally:
            ctx.sharded = False
    got = _compute(g, ctx) if distributed.is_main() else None
    return distributed.broadcast(got)


def _read_cache(path: Path, g: Group) -> dict[str, Result] | None:
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
        metrics = {k: Result.from_json(v) for k, v in d["metrics"].items()}
    except Exception:
        return None  # unreadable cache is recomputed, never trusted
    return metrics if set(metrics) == set(g.metrics) else None


def _compute_halving(g: Group, ctx: Context) -> tuple[dict[str, Result], bool]:
    """``_compute``, retried with half the batch size after an out-of-memory error, down to 1.
    The batch sizes that ran out of memory, and the one that worked, go into every metric's
    ``details`` in results.json (a smaller batch changes no metric beyond its per-batch random
    streams: PGD starts and denoising noise are drawn per batch)."""
    original = ctx.settings["batch_size"]
    failed = []
    try:
        while True:
            results, cacheable = _compute(g, ctx)
            if cacheable or ctx.settings["batch_size"] <= 1:
                break
            failed.append(ctx.settings["batch_size"])
            ctx.settings["batch_size"] = max(1, ctx.settings["batch_size"] // 2)
            if ctx.progress is not None:
                progress.say(f"[{g.suite}] {g.name}: out of memory at batch size {failed[-1]}; "
                             f"retrying with {ctx.settings['batch_size']}")
    finally:
        used = ctx.settings["batch_size"]
        ctx.settings["batch_size"] = original
    if failed:
        for r in results.values():
            r.details["out_of_memory_at_batch_sizes"] = failed + ([] if cacheable else [used])
            if cacheable:
                r.details["batch_size_used"] = used
            else:
                r.reason += f" (at every batch size down to {used})"
    return results, cacheable


def _compute(g: Group, ctx: Context) -> tuple[dict[str, Result], bool]:
    """-> (results, cacheable).  Out of memory gives nulls with the reason (not cached: a rerun,
    say with a smaller --batch-size, retries); non-finite logits of the model on finite inputs give
    nulls with their count, and the run goes on.  Groups on generated samples (needs=("generated",))
    count diverged chains themselves and are not watched."""
    watch = None if "generated" in g.needs else _NonFiniteLogits(ctx.model)
    error = None
    try:
        out = g.fn(ctx)
    except BenchError:
        raise
    except torch.cuda.OutOfMemoryError as e:  # torch.OutOfMemoryError (CUDA, MPS)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {m: Result.missing(f"out of memory: {str(e).splitlines()[0][:160] if str(e) else 'no message'}")
                for m in g.metrics}, False
    except Exception as e:  # re-raised below unless non-finite logits explain it
        error = e
    finally:
        bad, rows = watch.close() if watch else (0, 0)
        if ctx.sharded:  # every rank must take the same branch below
            bad, rows = (int(v) for v in distributed.gather(torch.tensor([[bad, rows]])).sum(0))
    if bad:
        reason = (f"the model returned non-finite logits (NaN or inf) for {bad} of the {rows} finite inputs "
                  f"this metric gave it")
        n = {m: (out[m].n if error is None and m in out else 0) for m in g.metrics}
        return {m: Result.missing(reason, n[m], non_finite_logits=bad, inputs=rows) for m in g.metrics}, True
    if error is not None:
        raise error
    missing = [m for m in g.metrics if m not in out]
    if missing:
        raise RuntimeError(f"metric group {g.name} did not return {missing}")
    undeclared = [m for m in out if m not in g.metrics]
    if undeclared:  # every metric declares its facts at registration (bench.metrics.register)
        raise RuntimeError(f"metric group {g.name} returned undeclared metric(s) {undeclared}")
    return {m: out[m] for m in g.metrics}, True


class _NonFiniteLogits:
    """Counts, through a forward hook on the network, the finite input rows whose logits are not
    all finite (kept on the device until read: no synchronisation per forward).  Calls inside
    torch.func transforms (vmap, jvp) are skipped: their values are not plain tensors."""

    def __init__(self, model: torch.nn.Module):
        self.bad = self.rows = 0
        net = getattr(model, "net", model)
        self.handle = net.register_forward_hook(self._hook)

    def _hook(self, module, args, out) -> None:
        if not (isinstance(out, torch.Tensor) and out.ndim == 2 and args and isinstance(args[0], torch.Tensor)
                and len(args[0]) == len(out)) or _wrapped(out) or _wrapped(args[0]):
            return
        with torch.no_grad():
            ok_in = torch.isfinite(args[0].detach().flatten(1)).all(1)
            self.bad = self.bad + (ok_in & ~torch.isfinite(out.detach()).all(1)).sum()
            self.rows = self.rows + ok_in.sum()

    def close(self) -> tuple[int, int]:
        self.handle.remove()
        return int(self.bad), int(self.rows)


def _wrapped(t: torch.Tensor) -> bool:
    check = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return bool(check and check(t))


def _fmt(name: str, r: Result) -> str:
    return f"{name}={r.value:.4g}" if r.value is not None else f"{name}=null ({r.reason})"


def _write_outputs(res: Results, out: Path, log) -> None:
    from bench import tables

    tables.write_run_tables(res, out / "tables")
    log(f"results: {out / 'results.json'}")
