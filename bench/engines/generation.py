"""The run's generated set: ``generated(model, data, settings, run, out, generator)`` makes it with
the SGLD sampler (``bench.engines.sampling.generate``, the run's generation settings), saves it to
``OUT/samples/samples.npz`` with a grid PNG, and reuses that file when it records the same
generation key (``generation_key``: settings, model, data, code).  The pipeline makes it once per
run and gives it to the contexts of the groups that need it (``bench.metrics.context.with_generated``)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from bench import __version__
from bench.core import cost
from bench.core.fileio import atomic_write_with
from bench.core.settings import DEFAULTS, GEN_SETTINGS
from bench.engines.sampling import CHAIN_BLOCK, SGLDConfig, generate
from bench.runtime import distributed
from bench.runtime.execution import Execution

SAMPLES_FORMAT = 1


@dataclass
class Generated:
    """The run's generated set (on the CPU): images (a diverged chain is a NaN image), labels, the
    count of diverged chains, the key it was made under (``generation_key``) and how it was made
    (``info``: reused from samples.npz or generated, seconds, device, grid path)."""

    key: dict
    x: torch.Tensor
    y: torch.Tensor
    n_diverged: int
    info: dict = field(default_factory=dict)


def generation_key(settings, data) -> dict:
    """What the generated images depend on: the generation settings, the model's sha256 and
    weights digest, the data set's identity (name, classes, image shape, images) and the code."""
    s = settings
    key = {k: s.get(k, DEFAULTS.get(k)) for k in GEN_SETTINGS}
    key.update(model_sha256=s.get("model_sha256"), dataset=data.name,
               num_classes=int(data.num_classes), input_shape=list(data.input_shape),
               # set by the runner: the weights as loaded, both splits' images, this module's code
               # (with the sampler's: bench.pipeline.cache_keys.code_sha256 follows the imports)
               weights_sha256=s.get("weights_sha256"), data_sha256=s.get("data_sha256"),
               code_sha256=s.get("generation_code_sha256"))
    return json.loads(json.dumps(key, sort_keys=True, default=str))


def generation_cost(s, n_classes: int) -> cost.Work:
    """The generated set's work: ``gen_steps`` SGLD steps (a forward and a backward each) for each
    of ``n_gen`` chains, in batches of ``batch_size``, and its grid figure."""
    n = int(s.get("n_gen") or DEFAULTS["n_gen"])
    return cost.passes("backward", n, cost.batch(s), int(s.get("gen_steps") or DEFAULTS["gen_steps"])) + cost.figures(1)


def samples_dir(out: Path) -> Path:
    """Where a run into ``out`` keeps its generated set (``samples.npz``, ``grid.png``)."""
    return Path(out) / "samples"


def load_samples(path: Path, key: dict | None = None):
    """-> (x, y, meta) from a samples.npz, or None if it is missing, unreadable or (with ``key``)
    was made with other settings or another model."""
    if not Path(path).is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            x = torch.from_numpy(z["x"].astype(np.float32, copy=False))
            y = torch.from_numpy(z["y"].astype(np.int64, copy=False))
    except Exception:
        return None  # unreadable: regenerate, never trust
    if meta.get("format") != SAMPLES_FORMAT or len(x) != len(y):
        return None
    if key is not None and meta.get("key") != key:
        return None
    return x, y, meta


def save_samples(path: Path, x: torch.Tensor, y: torch.Tensor, meta: dict) -> Path:
    """Write x (float32, NaN for diverged chains), y and the JSON ``meta`` atomically, streamed to
    the file (numpy writes the arrays in chunks): no second copy of the images is made in memory
    (x already float32 on the CPU is written as it is)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"x": x.detach().cpu().float().numpy(), "y": y.detach().cpu().numpy().astype(np.int64),
              "meta": np.array(json.dumps(meta, sort_keys=True))}
    atomic_write_with(path, lambda f: np.savez(f, **arrays))
    return path


def generated(model, data, settings, run: Execution, out: Path, generator: torch.Generator | None = None,
              replay_buffer: torch.Tensor | None = None, model_name: str = "") -> Generated:
    """The run's generated set under ``settings`` (the generation settings and the identity keys
    of ``generation_key``), saved to ``samples_dir(out)/samples.npz`` with a grid PNG
    (``grid.png``, one row per class as in Fig. 6, naming ``model_name``), and reused from that
    file when it records the same generation key.  ``run``: the device, batch size and progress
    (under torchrun every rank makes the set together).  SGLD chains that start from the replay
    buffer take ``replay_buffer`` (in [0, 1], as the checkpoint loader hands it over)."""
    key = generation_key(settings, data)
    s = settings
    folder = samples_dir(out)
    npz, grid = folder / "samples.npz", folder / "grid.png"
    got = load_samples(npz, key) if key.get("model_sha256") and distributed.is_main() else None
    got = distributed.broadcast(got)  # under torchrun every rank reuses, or every rank generates
    if got is not None:
        x, y, meta = got
        n_div = int(meta.get("n_diverged", int((~torch.isfinite(x.flatten(1)).all(1)).sum())))
        info = {"reused": True, "file": str(npz), "seconds": meta.get("seconds"), "device": meta.get("device")}
    else:
        t0 = time.time()
        cfg = SGLDConfig.from_settings(s)
        # under torchrun every rank makes the set together, whichever group asked for it
        res = generate(model, data, cfg, n=int(s.get("n_gen", DEFAULTS["n_gen"])),
                       init=str(s.get("gen_init", DEFAULTS["gen_init"])), generator=generator,
                       replay_buffer=replay_buffer, run=replace(run, sharded=distributed.active()))
        x, y, n_div = res.x, res.y, res.n_diverged
        seconds = round(time.time() - t0, 3)
        meta = {"format": SAMPLES_FORMAT, "key": key, "n_diverged": n_div, "seconds": seconds,
                "device": str(run.device), "bench_version": __version__, "chain_block": CHAIN_BLOCK}
        save_samples(npz, x, y, meta)
        info = {"reused": False, "file": str(npz), "seconds": seconds, "device": str(run.device)}
    if not grid.is_file() or not info["reused"]:
        _grid(s, data, model_name, x, y, grid, n_div)
    info.update(n=len(x), n_diverged=n_div, grid=str(grid))
    return Generated(key, x, y, n_div, info)


def _grid(s, data, model_name: str, x, y, path: Path, n_div: int) -> None:
    from bench.engines import sample_figures

    eq = "Eq. 17, E(x,y)" if s.get("gen_energy", "joint") == "joint" else "Eq. 16, E(x,y) - E(x)"
    title = (f"{data.name}: SGLD samples ({eq}; {s.get('gen_init', 'gaussian')} start, "
             f"{s.get('gen_steps')} steps)" + (f"; {n_div} diverged" if n_div else ""))
    sample_figures.sample_grid(x, y, path, class_names=list(data.classes) or None, title=title,
                               model=model_name)
