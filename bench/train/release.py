"""Train the released checkpoints of one benchmark and write their manifest.

    python -m bench.train.release [--zoo digits|fmnist] [--out models/ZOO] [--methods jeat,at]
        [--variant lrelu] [--keep-buffer 1000] [--trained DIR] [--device cpu]

Each method's ``ZOO-<method>`` recipe (``ZOO-<method>-<variant>`` with ``--variant``) is trained
into ``OUT/<recipe>.safetensors``; with ``--trained DIR`` the file that ``bench train --recipe
<recipe> --out DIR/<recipe>.safetensors`` wrote is taken instead of training again.
``--keep-buffer N`` keeps the first N samples of a JEM/JEAT replay buffer, so that a released file
stays small (the buffer only seeds SGLD; the manifest says how much was kept).
``OUT/manifest.json`` records per file its sha256, size, recipe, seed, epochs, training seconds,
training-set size, clean test accuracy and PGD-20 accuracy (eps of the recipe, on the recipe's
``final_eval_n`` test points: all 450 for digits, the first 1,000 for Fashion-MNIST).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
from pathlib import Path

import torch

from bench import __version__
from bench.core import fileio
from bench.core.errors import BenchError
from bench.inputs import checkpoints
from bench.inputs.zoo import ZOOS
from bench.train.loop import train
from bench.train.recipe import METHODS


def keep_buffer(path: Path, n: int) -> str | None:
    """Rewrite ``path`` with only the first ``n`` replay-buffer samples (tensors and metadata
    otherwise byte for byte); returns what the manifest says of it, or None without a buffer."""
    from safetensors import safe_open
    from safetensors.torch import save as st_save

    with safe_open(str(path), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
        if "replay_buffer" not in keys:
            return None
        tensors = {k: f.get_tensor(k) for k in keys}
    total = len(tensors["replay_buffer"])
    if n < total:
        tensors["replay_buffer"] = tensors["replay_buffer"][:n].contiguous()
        fileio.atomic_write_bytes(path, st_save(tensors, metadata=meta))
    return f"first {min(n, total)} of {total} samples kept"


def entry(path: Path, name: str, method: str, buffer_note: str | None) -> dict:
    """The manifest entry of a released file, read from the file's own metadata."""
    meta = checkpoints.load(str(path)).meta
    if meta.get("recipe") != name:
        raise BenchError(f"{path} was trained by recipe {meta.get('recipe')!r}, not {name!r}")
    config, final = meta["recipe_config"], meta["final_metrics"]
    e = {"file": path.name, "method": method, "recipe": name, "seed": meta["seed"], "epochs": meta["epochs"],
         "sha256": checkpoints.sha256(path), "size_bytes": path.stat().st_size,
         "training_seconds": meta["training_seconds"], "clean_test_accuracy": final["test_accuracy"],
         "pgd20_test_accuracy": final.get("test_pgd20"), "eps": config["eps"],
         "train_n": config.get("train_n"), "final_eval_n": config.get("final_eval_n")}
    if "act" in meta.get("arch_kwargs", {}):
        e["activation"] = meta["arch_kwargs"]["act"]
    if buffer_note:
        e["replay_buffer"] = buffer_note
    return e


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default="digits", choices=sorted(ZOOS))
    ap.add_argument("--out", default=None, help="default: models/ZOO")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--variant", default=None, help="recipe suffix: ZOO-METHOD-VARIANT (e.g. lrelu)")
    ap.add_argument("--keep-buffer", type=int, default=None, help="replay-buffer samples kept in the file")
    ap.add_argument("--trained", default=None, help="folder of files already trained by bench train")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out or f"models/{a.zoo}")
    out.mkdir(parents=True, exist_ok=True)
    man_path = out / "manifest.json"
    for method in a.methods.split(","):
        name = f"{a.zoo}-{method}" + (f"-{a.variant}" if a.variant else "")
        path = out / f"{name}.safetensors"
        if a.trained:
            shutil.copyfile(Path(a.trained) / path.name, path)
        else:
            train(name, path, device=a.device)
        note = keep_buffer(path, a.keep_buffer) if a.keep_buffer is not None else None
        e = entry(path, name, method, note)
        # read just before writing: two release processes may train different methods side by side
        man = json.loads(man_path.read_text()) if man_path.is_file() else {"dataset": ZOOS[a.zoo], "models": {}}
        man["models"][name] = e
        if not a.trained:
            man["trained_on"] = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                                 "device": a.device, "threads": torch.get_num_threads(),
                                 "torch": torch.__version__, "bench": __version__}
        fileio.atomic_write_bytes(man_path, (json.dumps(man, indent=2, sort_keys=True) + "\n").encode())
        print(json.dumps(e), flush=True)


if __name__ == "__main__":
    main()
