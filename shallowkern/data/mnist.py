"""MNIST / Fashion-MNIST loaders for the IDX files (plain or gzipped)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import torch

from ._common import DATASETS, DatasetSpec, file_error, load_cached, require_file
from .download import ensure_downloaded
from .verify import check_files

__all__ = ["load_fashion_mnist", "load_mnist"]

IMAGES_MAGIC = 2051  # uint8 data, 3 dims
LABELS_MAGIC = 2049  # uint8 data, 1 dim


def _parse_idx(payload: bytes, path: Path) -> tuple[int, np.ndarray]:
    """Decode an IDX file of uint8 into (magic number, read-only array of the header's dims).

    Header (big-endian): two zero bytes, a type byte (0x08 = uint8), the number of dims,
    then one uint32 per dim; the payload must be exactly the product of the dims.
    """
    if len(payload) < 4:
        raise file_error(path, f"too short for an IDX header ({len(payload)} bytes)")
    (magic,) = struct.unpack(">I", payload[:4])
    if magic not in (IMAGES_MAGIC, LABELS_MAGIC):
        raise file_error(
            path, f"bad IDX magic number {magic} (expected {IMAGES_MAGIC} or {LABELS_MAGIC})"
        )
    ndim = payload[3]
    header = 4 + 4 * ndim
    if len(payload) < header:
        raise file_error(path, "truncated IDX header")
    dims = struct.unpack(f">{ndim}I", payload[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(payload) - header != expected:
        raise file_error(
            path, f"payload is {len(payload) - header} bytes but the header {dims} says {expected}"
        )
    arr = np.frombuffer(payload, dtype=np.uint8, offset=header).reshape(dims)
    return magic, arr  # frombuffer over bytes is already read-only


def _read_idx(path: Path, magic: int, shape: tuple[int, ...]) -> np.ndarray:
    """The array in ``path``, checked to carry ``magic`` and per-item ``shape`` (after N)."""
    found, arr = load_cached(path, _parse_idx)
    if found != magic:
        raise file_error(path, f"IDX magic number {found}, expected {magic}")
    if arr.shape[1:] != shape:
        raise file_error(path, f"items have shape {arr.shape[1:]}, expected {shape}")
    return arr


def _load_idx_pair(
    spec: DatasetSpec, root: str | os.PathLike[str] | None, train: bool, download: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    folder = ensure_downloaded(spec, root, download)
    images_name, labels_name = spec.train_files if train else spec.test_files
    images_path = require_file(folder, images_name)
    labels_path = require_file(folder, labels_name)
    check_files(spec, folder, [images_path, labels_path])  # known checksums (verify.py)
    images = _read_idx(images_path, IMAGES_MAGIC, spec.shape[1:])
    labels = _read_idx(labels_path, LABELS_MAGIC, ())
    if len(labels) != len(images):
        raise file_error(labels_path, f"{len(labels)} labels for {len(images)} images")
    if labels.size and labels.max() >= spec.num_classes:
        raise file_error(labels_path, f"labels outside 0..{spec.num_classes - 1}")
    # copies: the cached arrays are shared and read-only
    x = torch.from_numpy(images.copy()).unsqueeze(1)  # (N, 1, 28, 28)
    return x, torch.from_numpy(labels.astype(np.int64))


def load_mnist(
    root: str | os.PathLike[str] | None = None, train: bool = True, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST from ``<root>/MNIST/raw``.

    Returns ``x`` uint8 (N, 1, 28, 28) and ``y`` int64 (N,) in 0..9; N is 60000 (train) or
    10000 (test).
    """
    return _load_idx_pair(DATASETS["mnist"], root, train, download)


def load_fashion_mnist(
    root: str | os.PathLike[str] | None = None, train: bool = True, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST from ``<root>/FashionMNIST/raw``.

    Returns ``x`` uint8 (N, 1, 28, 28) and ``y`` int64 (N,) in 0..9; N is 60000 (train) or
    10000 (test).
    """
    return _load_idx_pair(DATASETS["fashion_mnist"], root, train, download)
