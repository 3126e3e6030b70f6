"""The platform fingerprint: what changes the kernels, and so the last digits, of a run's numbers.

``bench check --exact`` is bit-for-bit (1e-6 relative) only between runs with the same fingerprint.
Two machines of one marketing name ("AMD EPYC") can run different kernels: the CPU's vendor,
family and model decide which instruction sets it has, torch picks its vectorised kernels by its
CPU capability (``ATEN_CPU_CAPABILITY`` lowers it), oneDNN its convolutions by its ISA
(``ONEDNN_MAX_CPU_ISA``), MKL its BLAS code paths (``MKL_CBWR``, ``MKL_ENABLE_INSTRUCTIONS``), and
the thread count the order of summation.  A GPU run records the device, CUDA and cuDNN instead.

``record(device)`` is results.json's ``run.platform``; ``differences(a, b)`` names the parts that
differ ("cpu_capability 'AVX512' -> 'DEFAULT'").  Library versions live apart in
``run.versions`` and are compared by the check as part of the fingerprint.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

# environment variables that select kernels: recorded when set (a missing one is the default)
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS",
              "MKL_DEBUG_CPU_TYPE", "OPENBLAS_CORETYPE")


def record(device) -> dict:
    """results.json's ``run.platform``: machine, OS, Python, torch, the device and the kernels."""
    import torch

    dev = torch.device(device)
    rec = {"machine": platform.machine(), "system": platform.system(), "python": platform.python_version(),
           "torch": torch.__version__, "device": dev.type}
    if dev.type == "cuda":
        rec |= {"device_name": torch.cuda.get_device_name(dev), "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version(), "capability": list(torch.cuda.get_device_capability(dev))}
    else:
        cpu = cpu_info()
        rec |= {"device_name": cpu.get("model name") or platform.processor() or platform.machine(),
                "cpu_vendor": cpu.get("vendor_id"), "cpu_family": cpu.get("cpu family"), "cpu_model": cpu.get("model"),
                "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    rec |= {"onednn": _build("MKL-DNN|oneDNN"), "blas": _build("Math Kernel Library|OpenBLAS|BLAS_INFO"),
            "kernel_env": {k: os.environ[k] for k in KERNEL_ENV if k in os.environ},
            "threads": torch.get_num_threads(), "blas_threads": blas_threads()}
    return rec


def blas_threads() -> int | None:
    """The threads of the BLAS numpy and scipy call (KID, FID's sqrtm, the temperature fit sum in
    their order), which torch's thread count does not set; None where threadpoolctl sees none."""
    import numpy  # noqa: F401  (loads the BLAS threadpoolctl reports)

    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    counts = [i.get("num_threads") for i in threadpool_info() if i.get("user_api") == "blas"]
    return max(counts) if counts else None


def cpu_info() -> dict:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.split("\n\n")[0].splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() != "flags":
            out[key.strip()] = value.strip()
    return out


def _build(pattern: str) -> str | None:
    """The line of torch's build configuration naming a library (its version), or None."""
    import torch

    for line in torch.__config__.show().splitlines():
        if re.search(pattern, line):
            return line.strip(" -")
    return None


def differences(base: dict, cur: dict) -> list[str]:
    """The fingerprint fields that differ, ``name base -> current``.  A field the baseline does not
    record at all (made before bench recorded it) is not compared; a missing record differs."""
    if not base or not cur:
        return [] if base == cur and base else [f"record {'present' if base else 'missing'} -> "
                                                f"{'present' if cur else 'missing'}"]
    return [f"{k} {base.get(k)!r} -> {cur.get(k)!r}" for k in sorted(base) if base.get(k) != cur.get(k)]
