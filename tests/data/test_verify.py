"""Dataset verification (issue 9 items 7 and 8): known checksums for the official releases and
the rebuilt CIFAR-10 copy, gzipped or plain; CIFAR batch labels against file names; damaged,
swapped and mixed files are a DataError naming the file; unknown copies warn once."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest

from shallowkern import data
from shallowkern.data import DataError, UnknownDataWarning, load_dataset, verify
from shallowkern.data.verify import KNOWN, OFFICIAL, REBUILT, KnownFile, identify

from .test_loaders import REPO, write_cifar10, write_mnist

CIFAR = "cifar-10-batches-py"
BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


@pytest.fixture(scope="module")
def shared() -> Path:
    root = Path(os.environ.get("SHALLOWKERN_DATA", REPO.parent / "shared" / "datasets"))
    if not (root / CIFAR / "test_batch.gz").is_file():
        pytest.skip(f"the shared datasets are not at {root} (set SHALLOWKERN_DATA)")
    return root


@pytest.fixture(scope="module")
def test_batch_plain(shared: Path) -> bytes:
    return gzip.decompress((shared / CIFAR / "test_batch.gz").read_bytes())


def _copy(shared: Path, root: Path, replace: dict[str, bytes] | None = None,
          swap: tuple[str, str] | None = None) -> Path:
    """A CIFAR-10 folder under ``root``: symlinks to the shared batches, except the files in
    ``replace`` (written as given, under that exact name) and a ``swap`` of two names."""
    folder = root / CIFAR
    folder.mkdir(parents=True)
    replace = replace or {}
    for name in BATCHES + ["batches.meta"]:
        if any(k.removesuffix(".gz") == name for k in replace):
            continue
        src_name = name
        if swap and name in swap:
            src_name = swap[1] if name == swap[0] else swap[0]
        suffix = "" if name == "batches.meta" else ".gz"
        (folder / (name + suffix)).symlink_to(shared / CIFAR / (src_name + suffix))
    for name, blob in replace.items():
        (folder / name).write_bytes(blob)
    return root


def _no_unknown_warning():
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("error", UnknownDataWarning)
    return ctx


def test_every_shared_file_is_known_by_its_own_name(shared: Path) -> None:
    """The table pins the shared copy: each file (and, for CIFAR, the gunzipped payload)
    matches its own name; MNIST-likes as the official release, CIFAR-10 as the rebuilt copy."""
    for folder, dataset, release in (("MNIST/raw", "mnist", OFFICIAL),
                                     ("FashionMNIST/raw", "fashion_mnist", OFFICIAL),
                                     (CIFAR, "cifar10", REBUILT)):
        for path in sorted((shared / folder).iterdir()):
            known = identify(path).known
            assert known is not None, path
            assert (known.dataset, known.name) == (dataset, verify.logical_name(path)), path
            assert release in known.releases, path
    assert hashlib.sha256((shared / CIFAR / "batches.meta").read_bytes()).hexdigest() in {
        d for (alg, d) in KNOWN if alg == "sha256"}


def test_the_shared_copy_loads_without_a_warning(shared: Path) -> None:
    ctx = _no_unknown_warning()
    try:
        x, _ = load_dataset("cifar10", shared, train=False)
        assert x.shape == (10000, 3, 32, 32)
        load_dataset("fashion_mnist", shared, train=False)
    finally:
        ctx.__exit__(None, None, None)


def test_a_plain_rebuilt_batch_is_verified_too(shared, test_batch_plain, tmp_path) -> None:
    root = _copy(shared, tmp_path, {"test_batch": test_batch_plain})
    ctx = _no_unknown_warning()
    try:
        x, _ = data.load_cifar10(root, train=False)
    finally:
        ctx.__exit__(None, None, None)
    assert x.shape == (10000, 3, 32, 32)


def _flip_pixel(payload: bytes) -> bytes:
    """The same pickle with one pixel byte changed in place (no re-pickling)."""
    batch = pickle.loads(payload, encoding="bytes")
    row = batch[b"data"][123].tobytes()
    at = payload.find(row)
    assert at > 0
    out = bytearray(payload)
    out[at + 500] ^= 0x01
    return bytes(out)


def _flip_label(payload: bytes) -> bytes:
    batch = pickle.loads(payload, encoding="bytes")
    batch[b"labels"][17] = (batch[b"labels"][17] + 1) % 10
    return pickle.dumps(batch, protocol=2)


@pytest.mark.parametrize("damage", ["pixel", "label"])
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_a_flipped_pixel_or_label_is_a_data_error(shared, test_batch_plain, tmp_path, damage,
                                                  gz) -> None:
    """Issue 9 item 7: a flipped pixel or label in a plain batch loaded silently."""
    blob = (_flip_pixel if damage == "pixel" else _flip_label)(test_batch_plain)
    name = "test_batch.gz" if gz else "test_batch"
    root = _copy(shared, tmp_path, {name: gzip.compress(blob, 1) if gz else blob})
    with pytest.raises(DataError, match=rf"{name}: content matches no known checksum \(sha256 "
                       r"[0-9a-f]{64}\), although data_batch_1\.gz in the same folder is the "
                       r"rebuilt CIFAR-10 copy.*corrupted or modified"):
        data.load_cifar10(root, train=False)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_test_batch_swapped_with_data_batch_1_is_a_data_error(shared, tmp_path, gz) -> None:
    """Issue 9 item 7: test_batch swapped with data_batch_1 loaded silently."""
    if gz:
        root = _copy(shared, tmp_path, swap=("data_batch_1", "test_batch"))
        bad = "data_batch_1.gz"
    else:
        b1 = gzip.decompress((shared / CIFAR / "data_batch_1.gz").read_bytes())
        tb = gzip.decompress((shared / CIFAR / "test_batch.gz").read_bytes())
        root = _copy(shared, tmp_path, {"data_batch_1": tb, "test_batch": b1})
        bad = "data_batch_1"
    with pytest.raises(DataError, match=rf"{bad}: holds the content of test_batch .*swapped"):
        data.load_cifar10(root, train=True)
    with pytest.raises(DataError, match=r"test_batch(\.gz)?: holds the content of data_batch_1"):
        data.load_cifar10(root, train=False)


def test_an_unknown_copy_warns_once_and_its_batch_labels_are_checked(tmp_path) -> None:
    blobs = write_cifar10(tmp_path)
    with pytest.warns(UnknownDataWarning, match=r"test_batch: not a known release of cifar10"):
        data.load_cifar10(tmp_path, train=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownDataWarning)  # reported once per file
        data.load_cifar10(tmp_path, train=False)
    # swapped in an unknown copy: no checksum can tell, the batch's own label does
    other = tmp_path / "swapped"
    folder = other / CIFAR
    folder.mkdir(parents=True)
    for name, blob in blobs.items():
        target = {"test_batch": "data_batch_1", "data_batch_1": "test_batch"}.get(name, name)
        (folder / target).write_bytes(blob)
    with pytest.warns(UnknownDataWarning), pytest.raises(
            DataError, match=r"data_batch_1: batch_label is 'testing batch 1 of 1', expected "
                             r"'training batch 1 of 5' for data_batch_1"):
        data.load_cifar10(other, train=True)


def test_a_batch_without_its_label_is_a_data_error(tmp_path) -> None:
    write_cifar10(tmp_path)
    path = tmp_path / CIFAR / "test_batch"
    batch = pickle.loads(path.read_bytes(), encoding="bytes")
    del batch[b"batch_label"]
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.warns(UnknownDataWarning), pytest.raises(DataError, match="batch_label is None"):
        data.load_cifar10(tmp_path, train=False)


def _register(monkeypatch, path: Path, name: str, release: str, dataset: str = "cifar10",
              algorithm: str = "md5", form: str = "plain") -> None:
    digest = hashlib.new(algorithm, path.read_bytes()).hexdigest()
    monkeypatch.setitem(KNOWN, (algorithm, digest),
                        KnownFile(dataset, name, frozenset({release}), algorithm, form))
    verify._identify.cache_clear()


def test_a_release_known_by_md5_verifies_plain_and_gzipped(tmp_path, monkeypatch) -> None:
    """The official CIFAR batches are known by MD5 only (torchvision's table); a user who
    gzipped them still verifies (MD5 of the payload)."""
    write_cifar10(tmp_path)
    folder = tmp_path / CIFAR
    for name in BATCHES:
        _register(monkeypatch, folder / name, name, "release X")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownDataWarning)
        data.load_cifar10(tmp_path, train=True)
        path = folder / "data_batch_3"
        path.with_name("data_batch_3.gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
        data.load_cifar10(tmp_path, train=True)


def test_files_of_two_releases_are_not_mixed(tmp_path, monkeypatch) -> None:
    write_cifar10(tmp_path)
    folder = tmp_path / CIFAR
    for name in BATCHES:
        _register(monkeypatch, folder / name, name, "release B" if name == "data_batch_2"
                  else "release A")
    with pytest.raises(DataError, match=r"files of different releases read together "
                                        r"\(.*data_batch_2: release B"):
        data.load_cifar10(tmp_path, train=True)
    data.load_cifar10(tmp_path, train=False)  # one file alone is consistent


def test_mnist_swaps_and_foreign_files_are_data_errors(shared, tmp_path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    src = shared / "MNIST" / "raw"
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (raw / name).symlink_to(src / name)
    (raw / "t10k-labels-idx1-ubyte.gz").symlink_to(src / "train-labels-idx1-ubyte.gz")
    (raw / "train-labels-idx1-ubyte.gz").symlink_to(src / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: holds the content of "
                                        r"train-labels-idx1-ubyte"):
        data.load_mnist(tmp_path, train=False)
    fm = tmp_path / "FashionMNIST" / "raw"
    fm.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (fm / name).symlink_to(src / name)
    with pytest.raises(DataError, match=r"holds the content of t10k-images-idx3-ubyte of mnist"):
        data.load_fashion_mnist(tmp_path, train=False)


def test_a_flipped_byte_in_a_plain_mnist_file_is_a_data_error(shared, tmp_path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    src = shared / "MNIST" / "raw"
    images = bytearray(gzip.decompress((src / "t10k-images-idx3-ubyte.gz").read_bytes()))
    (raw / "t10k-images-idx3-ubyte").write_bytes(images)  # plain, intact: verified
    (raw / "t10k-labels-idx1-ubyte.gz").symlink_to(src / "t10k-labels-idx1-ubyte.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownDataWarning)
        data.load_mnist(tmp_path, train=False)
    images[5000] ^= 0x80
    (raw / "t10k-images-idx3-ubyte").write_bytes(images)
    os.utime(raw / "t10k-images-idx3-ubyte", ns=(1, 1))  # new mtime even on a coarse clock
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: content matches no known "
                                        r"checksum.*corrupted or modified"):
        data.load_mnist(tmp_path, train=False)


def test_each_file_is_hashed_once_per_process_until_it_changes(tmp_path) -> None:
    write_mnist(tmp_path / "MNIST" / "raw")
    verify._identify.cache_clear()
    with pytest.warns(UnknownDataWarning):
        data.load_mnist(tmp_path, train=False)
    misses = verify._identify.cache_info().misses
    assert misses == 4  # the 2 files read, and their 2 train siblings (known copy or not?)
    for _ in range(3):
        data.load_mnist(tmp_path, train=False)
    assert verify._identify.cache_info().misses == misses
    path = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    os.utime(path, ns=(10**9, 10**9))
    data.load_mnist(tmp_path, train=False)
    assert verify._identify.cache_info().misses == misses + 1


def test_known_table_is_well_formed() -> None:
    for (alg, digest), known in KNOWN.items():
        assert alg in ("md5", "sha256") and len(digest) == {"md5": 32, "sha256": 64}[alg]
        assert int(digest, 16) >= 0 and known.algorithm == alg and known.form in ("gz", "plain")
        assert known.dataset in data.DATASETS and known.releases
    official = {(k.dataset, k.name) for k in KNOWN.values() if OFFICIAL in k.releases}
    for name in ("cifar10", "cifar100", "mnist", "fashion_mnist"):
        spec = data.DATASETS[name]
        for f in spec.train_files + spec.test_files:
            assert (name, f) in official, (name, f)
    assert np.all([d in KNOWN for d in KNOWN])
