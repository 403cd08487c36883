"""Verification of local dataset files: known checksums, a clear error, or one warning.

Every file a loader reads is identified by a digest of its content and looked up in ``KNOWN``:

* the **official releases**: MNIST and Fashion-MNIST IDX files, gzipped (the official MD5s,
  which the shared copies match, and their SHA-256) and uncompressed (SHA-256 of the official
  ``.gz`` files' payloads); CIFAR-10 and CIFAR-100 python batches, uncompressed, by the
  official MD5s (the ones torchvision checks; no SHA-256 is published);
* the **rebuilt CIFAR-10 copy** in ``../shared/datasets`` (its README: same images, labels and
  split, within-batch order partly reshuffled, so the official MD5s reject it), gzipped and
  uncompressed, by SHA-256 computed from those files.

A file is matched by the SHA-256 of its bytes; failing that, a gzipped file by the SHA-256 of
its payload (so a release gzipped by the user still verifies), and then by MD5 (of the bytes,
or of the payload) for the releases known only by MD5. Uncompressed files are verified exactly
as gzipped ones (issue 9 item 7: they were not verified at all).

The rules, for the files a loader reads from one dataset folder:

1. A file holding another file's content (``test_batch`` saved as ``data_batch_1``, the
   ``train`` and ``t10k`` files swapped, an MNIST file in the Fashion-MNIST folder) is a
   ``DataError`` naming the file and what it holds.
2. A file matching its own name in a known release is verified.
3. A file matching nothing is corrupted if any other file of the same folder matches a known
   release (a flipped pixel or label in one batch of a recognised copy): ``DataError`` naming
   the file, its digest and the release its siblings belong to. If no file of the folder
   matches anything, the copy is **unknown** (a user's own export): one ``UnknownDataWarning``
   per file per process says so, and the file is loaded with the structural checks only
   (IDX header and sizes, pickle layout, label ranges, CIFAR ``batch_label``).
4. Files of two different releases read together (the official ``data_batch_1`` with rebuilt
   ``data_batch_2..5``, whose batch membership differs, so images could repeat) are a
   ``DataError``.

CIFAR batches are in addition checked against their own ``batch_label`` (``training batch k of
5`` / ``testing batch 1 of 1``) in every case, known copy or not (``cifar.py``).

Cost: each file is hashed once per process (cache key: absolute path, size, mtime), with the
SHA-256 of its bytes only when it is known (about 20 ms per 30 MB batch on a CPU with SHA
instructions); payload digests and MD5 are computed only for files whose bytes are unknown.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

from ._common import DataError, DatasetSpec, file_error, find_file

__all__ = ["KNOWN", "Identity", "KnownFile", "UnknownDataWarning", "check_files", "identify"]

OFFICIAL = "the official release"
REBUILT = "the rebuilt CIFAR-10 copy of ../shared/datasets"

_GZIP_MAGIC = b"\x1f\x8b"


class UnknownDataWarning(UserWarning):
    """A dataset file matches no known release; it is loaded with structural checks only."""


@dataclass(frozen=True)
class KnownFile:
    """One known file content: the dataset, the file's name (without ``.gz``), the releases
    it belongs to, and how the digest was taken (``sha256``/``md5`` of the file's bytes as
    stored: ``gz``, or of the uncompressed content: ``plain``)."""

    dataset: str
    name: str
    releases: frozenset[str]
    algorithm: str
    form: str  # "gz" or "plain"


def _k(dataset: str, name: str, form: str, algorithm: str, digest: str,
       *releases: str) -> tuple[tuple[str, str], KnownFile]:
    return (algorithm, digest), KnownFile(dataset, name, frozenset(releases or (OFFICIAL,)),
                                          algorithm, form)


_IDX = "{}-images-idx3-ubyte", "{}-labels-idx1-ubyte"
# (algorithm, hex digest) -> KnownFile. The MNIST and Fashion-MNIST ".gz" entries are the
# official files (the shared copies are byte-identical: same MD5); "plain" entries are the
# SHA-256 of their payloads. CIFAR official MD5s: https://www.cs.toronto.edu/~kriz/cifar.html
# (also torchvision.datasets.CIFAR10/100). Rebuilt CIFAR-10: SHA-256 of the shared files and
# of their gunzipped payloads (as listed in ../shared/datasets/README.md).
KNOWN: dict[tuple[str, str], KnownFile] = dict([
    # MNIST
    _k("mnist", "train-images-idx3-ubyte", "gz", "md5", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    _k("mnist", "train-images-idx3-ubyte", "gz", "sha256",
       "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
    _k("mnist", "train-images-idx3-ubyte", "plain", "sha256",
       "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    _k("mnist", "train-labels-idx1-ubyte", "gz", "md5", "d53e105ee54ea40749a09fcbcd1e9432"),
    _k("mnist", "train-labels-idx1-ubyte", "gz", "sha256",
       "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
    _k("mnist", "train-labels-idx1-ubyte", "plain", "sha256",
       "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    _k("mnist", "t10k-images-idx3-ubyte", "gz", "md5", "9fb629c4189551a2d022fa330f9573f3"),
    _k("mnist", "t10k-images-idx3-ubyte", "gz", "sha256",
       "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
    _k("mnist", "t10k-images-idx3-ubyte", "plain", "sha256",
       "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    _k("mnist", "t10k-labels-idx1-ubyte", "gz", "md5", "ec29112dd5afa0611ce80d1b7f02629c"),
    _k("mnist", "t10k-labels-idx1-ubyte", "gz", "sha256",
       "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    _k("mnist", "t10k-labels-idx1-ubyte", "plain", "sha256",
       "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    # Fashion-MNIST
    _k("fashion_mnist", "train-images-idx3-ubyte", "gz", "md5",
       "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    _k("fashion_mnist", "train-images-idx3-ubyte", "gz", "sha256",
       "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
    _k("fashion_mnist", "train-images-idx3-ubyte", "plain", "sha256",
       "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    _k("fashion_mnist", "train-labels-idx1-ubyte", "gz", "md5",
       "25c81989df183df01b3e8a0aad5dffbe"),
    _k("fashion_mnist", "train-labels-idx1-ubyte", "gz", "sha256",
       "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
    _k("fashion_mnist", "train-labels-idx1-ubyte", "plain", "sha256",
       "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    _k("fashion_mnist", "t10k-images-idx3-ubyte", "gz", "md5",
       "bef4ecab320f06d8554ea6380940ec79"),
    _k("fashion_mnist", "t10k-images-idx3-ubyte", "gz", "sha256",
       "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
    _k("fashion_mnist", "t10k-images-idx3-ubyte", "plain", "sha256",
       "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    _k("fashion_mnist", "t10k-labels-idx1-ubyte", "gz", "md5",
       "bb300cfdad3c16e7a12a480ee83cd310"),
    _k("fashion_mnist", "t10k-labels-idx1-ubyte", "gz", "sha256",
       "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
    _k("fashion_mnist", "t10k-labels-idx1-ubyte", "plain", "sha256",
       "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    # CIFAR-10, official python batches (uncompressed, as in cifar-10-python.tar.gz)
    _k("cifar10", "data_batch_1", "plain", "md5", "c99cafc152244af753f735de768cd75f"),
    _k("cifar10", "data_batch_2", "plain", "md5", "d4bba439e000b95fd0a9bffe97cbabec"),
    _k("cifar10", "data_batch_3", "plain", "md5", "54ebc095f3ab1f0389bbae665268c751"),
    _k("cifar10", "data_batch_4", "plain", "md5", "634d18415352ddfa80567beed471001a"),
    _k("cifar10", "data_batch_5", "plain", "md5", "482c414d41f54cd18b22e5b47cb7c3cb"),
    _k("cifar10", "test_batch", "plain", "md5", "40351d587109b95175f43aff81a1287e"),
    _k("cifar10", "batches.meta", "plain", "md5", "5ff9c542aee3614f3951f8cda6e48888",
       OFFICIAL, REBUILT),
    _k("cifar10", "batches.meta", "plain", "sha256",
       "f962466ef690d46b226450fb9aadc74ba4bc64a76aa526b5827fe4bc5c7125cb", OFFICIAL, REBUILT),
    # CIFAR-10, the rebuilt copy (gzip -9 -n, and gunzipped)
    _k("cifar10", "data_batch_1", "gz", "sha256",
       "9e3ae38daefa31f3a3bc5fe3980c1c2d246dda483be74ba3c3e7e660bc68eacb", REBUILT),
    _k("cifar10", "data_batch_1", "plain", "sha256",
       "0209e303a893bb8adbaf9a4ff45ebc4518adcca1136706ab943d34506c01f9e2", REBUILT),
    _k("cifar10", "data_batch_2", "gz", "sha256",
       "9db794756497dddc535ef54f8b1ddc2814ffce8e8021c9d960f9ac8e7f6c5233", REBUILT),
    _k("cifar10", "data_batch_2", "plain", "sha256",
       "e86ad07ffcd2520cddbc2ab9fbf5548956a4410c3e67d3ab1a477538a070c65c", REBUILT),
    _k("cifar10", "data_batch_3", "gz", "sha256",
       "ff6f092b8239423612dd6d3082df3d2f270fc6144ad5260a59800ac90904ebb5", REBUILT),
    _k("cifar10", "data_batch_3", "plain", "sha256",
       "137d4ab5ccaf46e57e6ce5f2872bc66c93b19eb8c667c4da53f75a321b17e3b9", REBUILT),
    _k("cifar10", "data_batch_4", "gz", "sha256",
       "f4ae4350ef6e74c600d8c8238d54b04bfe2bc9d1aa4f7bcd08a984ee3769628b", REBUILT),
    _k("cifar10", "data_batch_4", "plain", "sha256",
       "d171e1a80ed1dc90d3507282b3589ff2b3e8b79f2e99c2b4f54bc26fa3c250bf", REBUILT),
    _k("cifar10", "data_batch_5", "gz", "sha256",
       "3204926ca334610dc11fd0cc36747147a481ab58831081e8f726941c507d1705", REBUILT),
    _k("cifar10", "data_batch_5", "plain", "sha256",
       "6af42147e9b559e994c885a354a6288ab95683669f2ce07487a2f97a02fd1277", REBUILT),
    _k("cifar10", "test_batch", "gz", "sha256",
       "ea838867dd1d2946e60e55eafad71a284d9c04b1d8333747e8d51661ae854c5a", REBUILT),
    _k("cifar10", "test_batch", "plain", "sha256",
       "bd755c42aa19024b89f646b1fa1fe5dcc26c8e0c826ce6d8d48c8dfe4d22d857", REBUILT),
    # CIFAR-100, official python files (uncompressed, as in cifar-100-python.tar.gz)
    _k("cifar100", "train", "plain", "md5", "16019d7e3df5f24257cddd939b257f8d"),
    _k("cifar100", "test", "plain", "md5", "f0ef6b0ae62326f3e7ffdfab6717acfc"),
    _k("cifar100", "meta", "plain", "md5", "7973b15100ade9c7d40fb424638fde48"),
])
_MD5_NEEDED = any(alg == "md5" for alg, _ in KNOWN)


@dataclass(frozen=True)
class Identity:
    """What a file is: its known entry (None if unknown) and the SHA-256 of its bytes."""

    known: KnownFile | None
    sha256: str
    gzipped: bool


def logical_name(path: Path) -> str:
    """The dataset file name a path stands for (``data_batch_1.gz`` -> ``data_batch_1``)."""
    return path.name.removesuffix(".gz")


def identify(path: Path) -> Identity:
    """Identify ``path`` by content (cached per process by absolute path, size and mtime)."""
    st = path.stat()
    return _identify(os.path.abspath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _identify(path: str, size: int, mtime_ns: int) -> Identity:
    raw = Path(path).read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    gz = raw.startswith(_GZIP_MAGIC)
    hit = KNOWN.get(("sha256", sha))
    if hit is None:
        payload = None
        if gz:
            try:
                payload = gzip.decompress(raw)
            except (OSError, EOFError, zlib.error):
                payload = None  # the loader reports the damaged gzip stream itself
            if payload is not None:
                hit = KNOWN.get(("sha256", hashlib.sha256(payload).hexdigest()))
        if hit is None and _MD5_NEEDED:
            hit = KNOWN.get(("md5", hashlib.md5(raw).hexdigest()))
            if hit is None and payload is not None:
                hit = KNOWN.get(("md5", hashlib.md5(payload).hexdigest()))
    return Identity(hit, sha, gz)


_WARNED: set[tuple[str, str]] = set()  # (absolute path, sha256): reported once per process


def _release_names(releases: frozenset[str]) -> str:
    return " or ".join(sorted(releases))


def check_files(spec: DatasetSpec, folder: Path, paths: list[Path]) -> None:
    """Apply the module's rules to ``paths`` (files of ``spec`` in ``folder``, about to be read).

    Raises DataError naming the offending file; warns (UnknownDataWarning, once per file and
    process) about files of an unknown copy.
    """
    ids = {p: identify(p) for p in paths}
    for p, ident in ids.items():
        k = ident.known
        if k is not None and (k.dataset != spec.name or k.name != logical_name(p)):
            what = k.name if k.dataset == spec.name else f"{k.name} of {k.dataset}"
            raise file_error(p, f"holds the content of {what} ({_release_names(k.releases)}), "
                                f"not {logical_name(p)}: the files are swapped or misnamed")
    releases = [ident.known.releases for ident in ids.values() if ident.known is not None]
    if releases and not frozenset.intersection(*releases):
        parts = sorted(f"{logical_name(p)}: {_release_names(i.known.releases)}"
                       for p, i in ids.items() if i.known is not None)
        raise DataError(f"{folder}: files of different releases read together ({'; '.join(parts)})"
                        "; their batches differ, so images could repeat or be missing. Use one "
                        "release for every file.")
    unknown = [p for p, ident in ids.items() if ident.known is None]
    if not unknown:
        return
    # Is this a known copy with a damaged file, or an unknown copy? Ask the siblings too.
    anchor = None
    for p, ident in ids.items():
        if ident.known is not None:
            anchor = (p, ident.known)
            break
    if anchor is None:
        names = spec.train_files + spec.test_files + _meta_files(spec)
        for name in names:
            sib = find_file(folder, name)
            if sib is None or sib in ids:
                continue
            k = identify(sib).known
            if k is not None and k.dataset == spec.name and k.name == name:
                anchor = (sib, k)
                break
    if anchor is not None:
        p = unknown[0]
        sib, k = anchor
        raise file_error(
            p, f"content matches no known checksum (sha256 {ids[p].sha256}), although "
               f"{sib.name} in the same folder is {_release_names(k.releases)}: the file is "
               f"corrupted or modified")
    for p in unknown:
        key = (os.path.abspath(p), ids[p].sha256)
        if key in _WARNED:
            continue
        _WARNED.add(key)
        warnings.warn(
            f"{p}: not a known release of {spec.name} (sha256 {ids[p].sha256[:16]}...); "
            f"loading it with structural checks only, its pixels and labels are not verified",
            UnknownDataWarning, stacklevel=4)


def _meta_files(spec: DatasetSpec) -> tuple[str, ...]:
    return {"cifar10": ("batches.meta",), "cifar100": ("meta",)}.get(spec.name, ())
