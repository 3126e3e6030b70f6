"""Ship the in-domain judges (docs/JUDGES.md): copy each trained judge checkpoint into
models/judges/<zoo>-judge.safetensors and write models/judges/manifest.json with its recipe,
sha256, size, accuracy on the WHOLE test split (measured here) and the training seconds its
metadata records.  It never trains unless asked (--train runs `bench train --recipe <zoo>-judge`
into --from first).

    python tools/make_judges.py                       # from runs/judges/ (the default --from)
    python tools/make_judges.py --from DIR digits     # one judge
    python tools/make_judges.py --train fmnist        # train, then ship
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.engines import judges  # noqa: E402
from bench.inputs import checkpoints, data, zoo  # noqa: E402
from bench.train.loop import accuracy  # noqa: E402


def ship(prefix: str, src: Path, out: Path) -> dict:
    name = f"{prefix}-judge"
    loaded = checkpoints.load(str(src))
    meta = loaded.meta
    if meta.get("recipe") != name:
        raise SystemExit(f"{src}: recipe {meta.get('recipe')!r}, expected {name!r}")
    ds = data.load(zoo.ZOOS[prefix])
    acc = accuracy(loaded.model.eval(), ds.test.x, ds.test.y)
    dest = out / f"{name}.safetensors"
    if src.resolve() != dest.resolve():
        shutil.copyfile(src, dest)
    return {"file": dest.name, "recipe": name, "dataset": ds.name, "arch": meta.get("arch"),
            "arch_kwargs": meta.get("arch_kwargs"), "method": meta.get("method"), "seed": meta.get("seed"),
            "epochs": meta.get("epochs"), "sha256": checkpoints.sha256(dest), "size_bytes": dest.stat().st_size,
            "test_accuracy": round(acc, 6), "test_n": len(ds.test),
            "training_seconds": meta.get("training_seconds"),
            "penultimate_features": judges.last_linear(loaded.model.net).in_features}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="src", type=Path, default=ROOT / "runs" / "judges",
                    help="folder of the trained <zoo>-judge.safetensors (default runs/judges)")
    ap.add_argument("--train", action="store_true", help="train the judges into --from first (bench train)")
    ap.add_argument("zoos", nargs="*", help=f"which judges (default: {', '.join(zoo.ZOOS)})")
    a = ap.parse_args()
    out = ROOT / "models" / "judges"  # this checkout's, not the installed package's
    out.mkdir(parents=True, exist_ok=True)
    man = (json.loads((out / judges.MANIFEST).read_text()) if (out / judges.MANIFEST).is_file() else None) or {"about": "in-domain judges of sample quality (docs/JUDGES.md), made by "
                                         "tools/make_judges.py", "judges": {}}
    for prefix in a.zoos or list(zoo.ZOOS):
        src = a.src / f"{prefix}-judge.safetensors"
        if a.train:
            subprocess.run([sys.executable, "-m", "bench", "train", "--recipe", f"{prefix}-judge", "--out", str(src)],
                           cwd=ROOT, check=True)
        if not src.is_file():
            raise SystemExit(f"no trained judge at {src} (train it with --train, or pass --from)")
        man["judges"][f"{prefix}-judge"] = entry = ship(prefix, src, out)
        print(f"{prefix}-judge: test accuracy {entry['test_accuracy']:.4f} on {entry['test_n']}, "
              f"{entry['size_bytes']} bytes, sha256 {entry['sha256'][:12]}", flush=True)
    (out / judges.MANIFEST).write_text(json.dumps(man, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
