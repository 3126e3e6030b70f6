"""Train the released checkpoints of one benchmark and write their manifest.

    python -m bench.train.release [--zoo digits|fmnist] [--out models/ZOO] [--methods jeat,at] [--device cpu]

Each method's ``ZOO-<method>`` recipe is trained into ``OUT/ZOO-<method>.safetensors``;
``OUT/manifest.json`` records per file its sha256, size, recipe, seed, epochs, training seconds,
training-set size, clean test accuracy and PGD-20 accuracy (eps of the recipe, on the recipe's
``final_eval_n`` test points: all 450 for digits, the first 1,000 for Fashion-MNIST).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from bench import __version__
from bench.core import fileio
from bench.inputs import checkpoints
from bench.inputs.zoo import ZOOS
from bench.train.loop import train
from bench.train.recipe import METHODS


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default="digits", choices=sorted(ZOOS))
    ap.add_argument("--out", default=None, help="default: models/ZOO")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out or f"models/{a.zoo}")
    out.mkdir(parents=True, exist_ok=True)
    man_path = out / "manifest.json"
    for method in a.methods.split(","):
        name = f"{a.zoo}-{method}"
        path = out / f"{name}.safetensors"
        s = train(name, path, device=a.device)
        config = checkpoints.load(str(path)).meta["recipe_config"]
        # read just before writing: two release processes may train different methods side by side
        man = json.loads(man_path.read_text()) if man_path.is_file() else {"dataset": ZOOS[a.zoo], "models": {}}
        man["models"][name] = {
            "file": path.name, "method": method, "recipe": name, "seed": s["seed"], "epochs": s["epochs"],
            "sha256": s["sha256"], "size_bytes": path.stat().st_size,
            "training_seconds": s["training_seconds"], "clean_test_accuracy": s["test_accuracy"],
            "pgd20_test_accuracy": s["test_pgd20"], "eps": config["eps"],
            "train_n": config.get("train_n"), "final_eval_n": config.get("final_eval_n"),
        }
        man["trained_on"] = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                             "device": a.device, "threads": torch.get_num_threads(),
                             "torch": torch.__version__, "bench": __version__}
        fileio.atomic_write_bytes(man_path, (json.dumps(man, indent=2, sort_keys=True) + "\n").encode())
        print(json.dumps(man["models"][name]), flush=True)


if __name__ == "__main__":
    main()
