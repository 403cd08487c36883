"""Offline-first loaders for CIFAR-10/100, MNIST and Fashion-MNIST, a device-side loader and
the conventional host-side one (HostLoader, the plain-PyTorch baseline).

Files are read from a dataset root (``root=`` or ``$SHALLOWKERN_DATA``) laid out as::

    <root>/cifar-10-batches-py/{data_batch_1..5, test_batch}[.gz]
    <root>/cifar-100-python/{train, test}[.gz]
    <root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
    <root>/FashionMNIST/raw/...   (same names as MNIST)

Nothing is downloaded unless ``download=True`` is passed and a file is missing. Every file read
is verified against the known checksums of the official releases and of the rebuilt CIFAR-10
copy of ``../shared/datasets`` (``verify.py``): a damaged, swapped or mixed file is a
DataError naming it; a copy that matches no known release loads with one UnknownDataWarning
per file.
"""

from __future__ import annotations

import os

import torch

from ._common import DATASETS, DataError, DatasetSpec, canonical_name, resolve_root
from .cifar import load_cifar10, load_cifar100
from .device_loader import DeviceLoader, train_val_split
from .download import download_dataset
from .host_loader import HostLoader
from .mnist import load_fashion_mnist, load_mnist
from .verify import UnknownDataWarning

__all__ = [
    "DATASETS",
    "DataError",
    "DatasetSpec",
    "DeviceLoader",
    "HostLoader",
    "UnknownDataWarning",
    "download_dataset",
    "load_cifar10",
    "load_cifar100",
    "load_dataset",
    "load_fashion_mnist",
    "load_mnist",
    "resolve_root",
    "train_val_split",
]

_LOADERS = {
    "cifar10": load_cifar10,
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
}


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    train: bool = True,
    download: bool = False,
    *,
    label_mode: str = "fine",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a dataset split as ``(x, y)`` CPU tensors.

    ``name`` is one of "cifar10", "cifar100", "mnist", "fashion_mnist" (case-insensitive;
    "fashion-mnist" and "fashionmnist" also work). ``x`` is uint8 NCHW: (N, 3, 32, 32) for
    CIFAR, (N, 1, 28, 28) for the MNIST-likes; ``y`` is int64 (N,). ``label_mode`` ("fine" or
    "coarse") applies to CIFAR-100 only. Missing or corrupted files raise DataError.
    """
    key = canonical_name(name)
    if key == "cifar100":
        return load_cifar100(root, train, download, label_mode=label_mode)
    if label_mode != "fine":
        raise ValueError(f"label_mode={label_mode!r} only applies to cifar100")
    return _LOADERS[key](root, train, download)
