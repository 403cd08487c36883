"""Shared pieces of the dataset loaders: errors, dataset specs, root resolution, file cache."""

from __future__ import annotations

import functools
import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

__all__ = ["DATASETS", "DataError", "DatasetSpec", "resolve_root"]

T = TypeVar("T")

ENV_VAR = "SHALLOWKERN_DATA"
_GZIP_MAGIC = b"\x1f\x8b"


class DataError(RuntimeError):
    """A dataset file is missing, truncated or corrupted, or no dataset root is configured."""


def file_error(path: Path, problem: str) -> DataError:
    """The one message format every loader uses: which file, what is wrong, what to do."""
    return DataError(
        f"{path}: {problem}. Delete it and re-download with download=True, or restore the file."
    )


@dataclass(frozen=True)
class DatasetSpec:
    """Static description of one dataset.

    ``train_files``/``test_files`` are names inside ``<root>/<folder>``; each may also be
    present gzipped (``<name>.gz``). ``downloads`` pairs each file to fetch from one of the
    ``urls`` (base URLs, tried in order) with its official MD5; ``.tar.gz`` archives are
    extracted into ``<root>``, anything else is stored as-is in ``<root>/<folder>``.
    ``mean``/``std`` are per-channel statistics of the training pixels scaled to [0, 1].
    """

    name: str
    num_classes: int
    shape: tuple[int, int, int]  # (C, H, W) of one image
    mean: tuple[float, ...]
    std: tuple[float, ...]
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    urls: tuple[str, ...]
    downloads: tuple[tuple[str, str], ...]


def _idx_files(prefix: str) -> tuple[str, str]:
    return (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(
        name="cifar10",
        num_classes=10,
        shape=(3, 32, 32),
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        urls=("https://www.cs.toronto.edu/~kriz/",),
        downloads=(("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
    ),
    "cifar100": DatasetSpec(
        name="cifar100",
        num_classes=100,
        shape=(3, 32, 32),
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        urls=("https://www.cs.toronto.edu/~kriz/",),
        downloads=(("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),),
    ),
    "mnist": DatasetSpec(
        name="mnist",
        num_classes=10,
        shape=(1, 28, 28),
        mean=(0.1307,),
        std=(0.3081,),
        folder="MNIST/raw",
        train_files=_idx_files("train"),
        test_files=_idx_files("t10k"),
        urls=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        downloads=(
            ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
            ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
            ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
        ),
    ),
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        num_classes=10,
        shape=(1, 28, 28),
        mean=(0.2860,),
        std=(0.3530,),
        folder="FashionMNIST/raw",
        train_files=_idx_files("train"),
        test_files=_idx_files("t10k"),
        urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        downloads=(
            ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        ),
    ),
}


def canonical_name(name: str) -> str:
    """Map a user-facing dataset name (case-insensitive, ``-``/``_`` optional) to a DATASETS key."""
    key = name.lower().replace("-", "").replace("_", "")
    for canonical in DATASETS:
        if canonical.replace("_", "") == key:
            return canonical
    raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")


def default_download_root() -> Path:
    """Where ``download=True`` puts data when neither root= nor SHALLOWKERN_DATA is given."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "shallowkern" / "datasets"


def resolve_root(root: str | os.PathLike[str] | None = None, *, download: bool = False) -> Path:
    """Return the dataset root: ``root`` if given, else ``$SHALLOWKERN_DATA``.

    With neither set, ``download=True`` falls back to ``default_download_root()``;
    otherwise a DataError explains how to configure one.
    """
    if root is None:
        root = os.environ.get(ENV_VAR) or None
    if root is not None:
        return Path(root).expanduser()
    if download:
        return default_download_root()
    raise DataError(
        f"no dataset root configured: pass root=..., set the environment variable {ENV_VAR} "
        f"to the folder holding the datasets, or pass download=True to download them into "
        f"{default_download_root()}"
    )


def find_file(folder: Path, name: str) -> Path | None:
    """The path of ``name`` in ``folder``, plain or gzipped (plain preferred), or None."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def require_file(folder: Path, name: str) -> Path:
    """Like find_file, but a missing file is a DataError."""
    path = find_file(folder, name)
    if path is None:
        raise DataError(
            f"{folder / name}: missing (also looked for {name}.gz). Pass download=True to fetch "
            f"the dataset, or restore the file."
        )
    return path


def read_payload(path: Path) -> bytes:
    """The file's bytes, gunzipped if they start with the gzip magic (whatever the suffix)."""
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise file_error(path, f"corrupted or truncated gzip data ({exc})") from exc


def load_cached(path: Path, parse: Callable[[bytes, Path], T]) -> T:
    """``parse(read_payload(path), path)``, decoded once per process.

    Keyed by (path, mtime, size) so a replaced or repaired file is decoded again. ``parse``
    must be a module-level function (it is part of the key) and should return read-only
    arrays, since the result is shared by every caller.
    """
    st = path.stat()
    # abspath, not resolve(): a symlink keeps its own name, which the loaders check the
    # content against (a CIFAR batch's label, the verified checksum's file name)
    return _load_cached(os.path.abspath(path), st.st_mtime_ns, st.st_size, parse)


@functools.lru_cache(maxsize=32)  # all four datasets together are 18 files
def _load_cached(path: str, mtime_ns: int, size: int, parse: Callable[[bytes, Path], T]) -> T:
    return parse(read_payload(Path(path)), Path(path))
