"""CIFAR-10 / CIFAR-100 loaders for the python-pickle release (batches plain or gzipped)."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from ._common import DATASETS, DatasetSpec, file_error, load_cached, require_file
from .download import ensure_downloaded
from .verify import check_files

__all__ = ["load_cifar10", "load_cifar100"]

CIFAR100_COARSE_CLASSES = 20

# Globals a CIFAR pickle may reference: numpy's array reconstruction (both numpy 1 and 2
# module names, old and new protocols) and the bytes codec used by protocol-2 pickles
# written by Python 3. Anything else is refused so a tampered file cannot run code.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return super().find_class(module, name)


def expected_batch_label(spec: DatasetSpec, name: str) -> str:
    """The ``batch_label`` a batch file of the official layout carries, from its name:
    ``data_batch_k`` -> "training batch k of 5", ``test_batch`` / CIFAR-100 ``test`` ->
    "testing batch 1 of 1", CIFAR-100 ``train`` -> "training batch 1 of 1"."""
    if name in spec.test_files:
        return f"testing batch {spec.test_files.index(name) + 1} of {len(spec.test_files)}"
    return f"training batch {spec.train_files.index(name) + 1} of {len(spec.train_files)}"


def _parse_batch(payload: bytes,
                 path: Path) -> tuple[np.ndarray, dict[str, np.ndarray], str | None]:
    """Decode one pickled batch into (images uint8 (N, 3, 32, 32), {label key: int64 (N,)},
    its ``batch_label`` or None).

    Every ``*labels`` entry present is returned, so one cached decode serves both CIFAR-100
    label modes. Label ranges and the batch label are checked by the caller, which knows the
    class count and which file it asked for.
    """
    try:
        # encoding="bytes" keeps the Python-2 image buffers as bytes; keys then come back as
        # bytes (official files) or str (files pickled by Python 3), so normalise them.
        batch = _RestrictedUnpickler(io.BytesIO(payload), encoding="bytes").load()
    except Exception as exc:  # a damaged pickle can fail in many ways (EOFError, KeyError, ...)
        raise file_error(path, f"not a readable pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(batch, dict):
        raise file_error(path, f"expected a pickled dict, got {type(batch).__name__}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}

    data = batch.get("data")
    if not isinstance(data, np.ndarray):
        raise file_error(path, f"'data' must be a uint8 array, got {type(data).__name__}")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise file_error(
            path, f"'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}"
        )
    labels = {}
    for key, value in batch.items():
        if not key.endswith("labels"):
            continue
        arr = np.asarray(value)
        if arr.shape != (data.shape[0],) or not np.issubdtype(arr.dtype, np.integer):
            raise file_error(
                path, f"'{key}' must hold {data.shape[0]} integers, got {arr.dtype} {arr.shape}"
            )
        labels[key] = arr.astype(np.int64)
        labels[key].setflags(write=False)  # shared through the cache
    images = np.ascontiguousarray(data).reshape(-1, 3, 32, 32)  # rows are channel-major CHW
    images.setflags(write=False)
    label = batch.get("batch_label")
    if isinstance(label, bytes):
        label = label.decode("latin1")
    return images, labels, label if isinstance(label, str) else None


def _load_batches(
    spec: DatasetSpec, root: str | os.PathLike[str] | None, train: bool, download: bool,
    label_key: str, num_classes: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    folder = ensure_downloaded(spec, root, download)
    names = spec.train_files if train else spec.test_files
    paths = [require_file(folder, name) for name in names]
    check_files(spec, folder, paths)  # known checksums (verify.py); cached per file
    xs, ys = [], []
    for name, path in zip(names, paths):
        images, labels, batch_label = load_cached(path, _parse_batch)
        expected = expected_batch_label(spec, name)
        if batch_label != expected:
            # test_batch swapped with data_batch_1, or batches renumbered: each batch names
            # itself, so a wrong file is caught even in an unknown (unverified) copy
            raise file_error(path, f"batch_label is {batch_label!r}, expected {expected!r} for "
                                   f"{name}: the file is misnamed or swapped with another batch")
        if label_key not in labels:
            raise file_error(path, f"no '{label_key}' entry (is this a {spec.name} file?)")
        y = labels[label_key]
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise file_error(path, f"'{label_key}' outside 0..{num_classes - 1}")
        xs.append(images)
        ys.append(y)
    # concatenate copies, so callers never alias (or mutate) the cached arrays
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def load_cifar10(
    root: str | os.PathLike[str] | None = None, train: bool = True, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 from ``<root>/cifar-10-batches-py``.

    Returns ``x`` uint8 (N, 3, 32, 32) RGB and ``y`` int64 (N,) in 0..9; N is 50000 (train)
    or 10000 (test).
    """
    spec = DATASETS["cifar10"]
    return _load_batches(spec, root, train, download, "labels", spec.num_classes)


def load_cifar100(
    root: str | os.PathLike[str] | None = None, train: bool = True, download: bool = False,
    label_mode: str = "fine",
) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-100 from ``<root>/cifar-100-python`` (files ``train``/``test``).

    Returns ``x`` uint8 (N, 3, 32, 32) and ``y`` int64 (N,): the 100 fine classes, or the 20
    superclasses with ``label_mode="coarse"``. N is 50000 (train) or 10000 (test).
    """
    if label_mode not in ("fine", "coarse"):
        raise ValueError(f"label_mode must be 'fine' or 'coarse', got {label_mode!r}")
    spec = DATASETS["cifar100"]
    num_classes = spec.num_classes if label_mode == "fine" else CIFAR100_COARSE_CLASSES
    return _load_batches(spec, root, train, download, f"{label_mode}_labels", num_classes)
