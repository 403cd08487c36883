"""Opt-in download of the official dataset files, with MD5 verification."""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path
from urllib.request import urlopen  # module attribute, so tests can replace the opener

from ._common import DATASETS, DataError, DatasetSpec, canonical_name, find_file, resolve_root

__all__ = ["download_dataset"]

_CHUNK = 1 << 20


def _fetch(url: str, md5: str, dest: Path) -> None:
    """Stream ``url`` into ``dest``, checking the MD5; a mismatching file is deleted."""
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.md5()
    try:
        with urlopen(url, timeout=60) as response, open(part, "wb") as out:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    if digest.hexdigest() != md5:
        part.unlink()
        raise DataError(
            f"checksum mismatch for {url}: MD5 {digest.hexdigest()}, expected {md5}; "
            f"the downloaded file was deleted, try download=True again"
        )
    os.replace(part, dest)


def _fetch_from_mirrors(spec: DatasetSpec, filename: str, md5: str, dest: Path) -> None:
    errors = []
    for base in spec.urls:
        try:
            _fetch(base + filename, md5, dest)
            return
        except (OSError, DataError) as exc:  # URLError is an OSError; try the next mirror
            errors.append(f"{base + filename}: {exc}")
    raise DataError(f"could not download {filename} for {spec.name}:\n  " + "\n  ".join(errors))


def _extract(archive: Path, root: Path) -> None:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            # The MD5 already pins the official archive; the "data" filter (Python >= 3.10.12 /
            # 3.11.4) additionally refuses members that would escape root.
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(root, **kwargs)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{archive}: cannot extract ({exc}); try download=True again") from exc
    finally:
        archive.unlink(missing_ok=True)  # extracted (or useless): free the space


def download_dataset(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Download ``name`` from its official location into ``root`` and return its folder.

    Each file's MD5 is checked against the official one before it is used (a mismatch raises
    DataError and deletes the file). Archives (CIFAR) are extracted into ``root``; IDX files
    (MNIST, Fashion-MNIST) are kept gzipped in ``<root>/<folder>``, skipping those present.
    """
    spec = DATASETS[canonical_name(name)]
    root_path = resolve_root(root, download=True)
    folder = root_path / spec.folder
    for filename, md5 in spec.downloads:
        if filename.endswith(".tar.gz"):
            root_path.mkdir(parents=True, exist_ok=True)
            archive = root_path / filename
            _fetch_from_mirrors(spec, filename, md5, archive)
            _extract(archive, root_path)
        elif find_file(folder, filename.removesuffix(".gz")) is None:
            folder.mkdir(parents=True, exist_ok=True)
            _fetch_from_mirrors(spec, filename, md5, folder / filename)
    return folder


def ensure_downloaded(
    spec: DatasetSpec, root: str | os.PathLike[str] | None, download: bool
) -> Path:
    """Resolve the dataset folder; with ``download``, fetch the dataset if any file is missing."""
    root_path = resolve_root(root, download=download)
    folder = root_path / spec.folder
    if download and any(find_file(folder, f) is None for f in spec.train_files + spec.test_files):
        download_dataset(spec.name, root_path)
    return folder
