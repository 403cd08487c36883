"""Dataset loaders: real files, synthetic CIFAR-100, damaged files, root resolution, download."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import tarfile
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from shallowkern import data
from shallowkern.data import DATASETS, DataError, load_dataset, resolve_root
from shallowkern.data import _common, download

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = Path(os.environ.get("SHALLOWKERN_DATA", REPO.parent / "shared" / "datasets"))
    if not root.is_dir():
        pytest.skip(f"real datasets not found at {root} (set SHALLOWKERN_DATA)")
    return root


@pytest.fixture(scope="session")
def cifar10_train(data_root: Path) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Full CIFAR-10 train set, decoded once per session, with the time the load took."""
    start = time.perf_counter()
    x, y = load_dataset("cifar10", data_root, train=True)
    return x, y, time.perf_counter() - start


# ---------------------------------------------------------------- synthetic file writers


def cifar_batch_bytes(
    n: int, *, label_keys: dict[str, int], seed: int = 0, bytes_keys: bool = False,
    batch_label: str = "training batch 1 of 1",
) -> tuple[bytes, np.ndarray, dict[str, np.ndarray]]:
    """A pickled CIFAR-format batch of ``n`` random images: (blob, data (n, 3072), labels)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = {k: rng.integers(0, classes, n) for k, classes in label_keys.items()}
    batch = {"batch_label": batch_label, "data": images}
    batch.update({k: v.tolist() for k, v in labels.items()})
    if bytes_keys:  # what Python-2 pickles (the official files) decode to
        batch = {k.encode(): v for k, v in batch.items()}
    return pickle.dumps(batch, protocol=2), images, labels


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of uint8 ``array`` (magic 2051 for 3-D images, 2049 for 1-D labels)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_cifar100(root: Path, n_train: int = 12, n_test: int = 6, gz: bool = False) -> dict:
    """Synthetic ``<root>/cifar-100-python/{train,test}``; returns the arrays written."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    written = {}
    for name, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        keys = {"fine_labels": 100, "coarse_labels": 20}
        label = f"{'training' if name == 'train' else 'testing'} batch 1 of 1"
        blob, images, labels = cifar_batch_bytes(n, label_keys=keys, seed=seed, batch_label=label)
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(blob) if gz else blob)
        written[name] = (images, labels)
    return written


def write_cifar10(root: Path, n: int = 4) -> dict[str, bytes]:
    """Synthetic plain-pickle ``<root>/cifar-10-batches-py``; returns {file name: blob}."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    blobs = {}
    for seed, name in enumerate(DATASETS["cifar10"].train_files + DATASETS["cifar10"].test_files):
        label = ("testing batch 1 of 1" if name == "test_batch"
                 else f"training batch {name[-1]} of 5")
        blobs[name] = cifar_batch_bytes(n, label_keys={"labels": 10}, seed=seed, bytes_keys=True,
                                        batch_label=label)[0]
        (folder / name).write_bytes(blobs[name])
    return blobs


def write_mnist(folder: Path, n: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic gzipped train and t10k IDX files in ``folder``; returns (images, labels)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix in ("train", "t10k"):
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    return images, labels


def assert_names_file(excinfo: pytest.ExceptionInfo, path: Path) -> None:
    message = str(excinfo.value)
    assert str(path.name) in message and "download=True" in message, message


# ------------------------------------------------------------------------- real datasets


def test_cifar10_train_real(cifar10_train) -> None:
    x, y, seconds = cifar10_train
    assert x.shape == (50000, 3, 32, 32) and x.dtype == torch.uint8
    assert y.shape == (50000,) and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == [5000] * 10
    assert y[0] == 6  # data_batch_1[0] is a frog, as in the original release
    pixels = x.float().div_(255)
    spec = DATASETS["cifar10"]
    torch.testing.assert_close(pixels.mean((0, 2, 3)), torch.tensor(spec.mean), atol=2e-4, rtol=0)
    torch.testing.assert_close(pixels.std((0, 2, 3)), torch.tensor(spec.std), atol=2e-4, rtol=0)
    assert seconds < 15, f"decoding CIFAR-10 train took {seconds:.1f} s"  # ~1.5 s on 2 cores


def test_cifar10_test_real(data_root: Path) -> None:
    x, y = data.load_cifar10(data_root, train=False)
    assert x.shape == (10000, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == [1000] * 10


@pytest.mark.parametrize(
    "name, train_counts, test_counts",
    [
        (
            "mnist",
            [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
            [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
        ),
        ("fashion_mnist", [6000] * 10, [1000] * 10),
    ],
)
def test_mnist_likes_real(data_root: Path, name: str, train_counts, test_counts) -> None:
    x, y = load_dataset(name, data_root, train=True)
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (60000,) and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == train_counts
    spec = DATASETS[name]
    pixels = x.float().div_(255)
    assert pixels.mean().item() == pytest.approx(spec.mean[0], abs=1e-4)
    assert pixels.std().item() == pytest.approx(spec.std[0], abs=1e-4)
    x_test, y_test = load_dataset(name, data_root, train=False)
    assert x_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(y_test).tolist() == test_counts


def test_mnist_first_sample(data_root: Path) -> None:
    x, y = data.load_mnist(data_root)
    assert y[0] == 5
    assert int((x[0] > 0).sum()) == 166 and int(x[0].max()) == 255


@pytest.mark.parametrize("alias", ["Fashion-MNIST", "fashionmnist", "FASHION_MNIST"])
def test_fashion_aliases(data_root: Path, alias: str) -> None:
    x, y = load_dataset(alias, data_root, train=False)
    x_ref, y_ref = data.load_fashion_mnist(data_root, train=False)
    assert torch.equal(x, x_ref) and torch.equal(y, y_ref)


def test_spec_md5s_match_the_real_idx_files(data_root: Path) -> None:
    # The shared MNIST / Fashion-MNIST files are byte-identical to the official ones, so this
    # pins the MD5 table that download=True verifies against.
    for name in ("mnist", "fashion_mnist"):
        spec = DATASETS[name]
        for filename, md5 in spec.downloads:
            blob = (data_root / spec.folder / filename).read_bytes()
            assert hashlib.md5(blob).hexdigest() == md5, filename


def test_results_are_private_copies(data_root: Path) -> None:
    x, y = load_dataset("mnist", data_root, train=False)
    x.zero_()
    y.fill_(-1)
    x2, y2 = load_dataset("mnist", data_root, train=False)
    assert x2.sum() > 0 and y2.min() >= 0


def test_download_true_does_nothing_when_files_exist(data_root: Path, monkeypatch) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("must not download when the files are present")

    monkeypatch.setattr(download, "urlopen", no_network)
    x, _ = load_dataset("mnist", data_root, train=False, download=True)
    assert x.shape == (10000, 1, 28, 28)


# ------------------------------------------------------------------- non-gz and synthetic


def test_mnist_plain_idx_equals_gzipped(data_root: Path, tmp_path: Path) -> None:
    src, dst = data_root / "MNIST" / "raw", tmp_path / "MNIST" / "raw"
    dst.mkdir(parents=True)
    # one file gunzipped, the other left gzipped: each is sniffed independently
    images = gzip.decompress((src / "t10k-images-idx3-ubyte.gz").read_bytes())
    (dst / "t10k-images-idx3-ubyte").write_bytes(images)
    labels = (src / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (dst / "t10k-labels-idx1-ubyte.gz").write_bytes(labels)
    x, y = data.load_mnist(tmp_path, train=False)
    x_ref, y_ref = data.load_mnist(data_root, train=False)
    assert torch.equal(x, x_ref) and torch.equal(y, y_ref)


@pytest.mark.parametrize("gz", [False, True])
def test_cifar10_synthetic_plain_and_gz(tmp_path: Path, gz: bool) -> None:
    blobs = write_cifar10(tmp_path)
    if gz:
        for path in (tmp_path / "cifar-10-batches-py").iterdir():
            path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
            path.unlink()
    x, y = data.load_cifar10(tmp_path, train=True)
    expected = [pickle.loads(blobs[f"data_batch_{i}"], encoding="bytes") for i in range(1, 6)]
    ref = np.concatenate([b[b"data"] for b in expected]).reshape(-1, 3, 32, 32)
    assert torch.equal(x, torch.from_numpy(ref))  # batches concatenated in order 1..5
    assert y.tolist() == sum((b[b"labels"] for b in expected), [])


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("label_mode, classes", [("fine", 100), ("coarse", 20)])
def test_cifar100_synthetic(tmp_path: Path, gz: bool, label_mode: str, classes: int) -> None:
    written = write_cifar100(tmp_path, gz=gz)
    for train, split in ((True, "train"), (False, "test")):
        x, y = load_dataset("CIFAR100", tmp_path, train=train, label_mode=label_mode)
        images, labels = written[split]
        assert x.shape == (len(images), 3, 32, 32) and x.dtype == torch.uint8
        assert y.dtype == torch.int64
        # rows are channel-major: 1024 R, 1024 G, 1024 B
        assert torch.equal(x[:, 1].reshape(len(images), -1), torch.from_numpy(images[:, 1024:2048]))
        assert y.tolist() == labels[f"{label_mode}_labels"].tolist()
        assert int(y.max()) < classes


def test_label_mode_validation(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    with pytest.raises(ValueError, match="label_mode"):
        data.load_cifar100(tmp_path, label_mode="medium")
    with pytest.raises(ValueError, match="label_mode"):
        load_dataset("mnist", tmp_path, label_mode="coarse")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet", tmp_path)


_CALLS: list[Path] = []


def _counting_parse(payload: bytes, path: Path) -> int:
    _CALLS.append(path)
    return len(payload)


def test_files_are_decoded_once_until_they_change(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"abc")
    _CALLS.clear()
    assert _common.load_cached(path, _counting_parse) == 3
    assert _common.load_cached(path, _counting_parse) == 3
    assert len(_CALLS) == 1
    path.write_bytes(gzip.compress(b"abcdef"))  # replaced (and now gzipped): decoded again
    assert _common.load_cached(path, _counting_parse) == 6
    assert len(_CALLS) == 2


# ------------------------------------------------------------------ damaged / missing files


def _damaged_cifar_payloads() -> dict[str, bytes]:
    good = cifar_batch_bytes(8, label_keys={"labels": 10})[0]
    evil = b"cos\nsystem\n(S'echo pwned'\ntR."  # would run a shell command if unpickled freely

    def batch(**entries) -> bytes:
        return pickle.dumps(entries, protocol=2)

    return {
        "truncated pickle": good[: len(good) // 2],
        "garbage": b"\x80\x02this is not a pickle at all",
        "truncated gzip": gzip.compress(good)[:-50],
        "garbled gzip": (lambda z: z[:40] + bytes(b ^ 0xFF for b in z[40:80]) + z[80:])(
            gzip.compress(good)
        ),
        "not a dict": pickle.dumps([1, 2, 3]),
        "forbidden global": evil,
        "wrong data shape": batch(data=np.zeros((8, 3000), np.uint8), labels=[0] * 8),
        "wrong data dtype": batch(data=np.zeros((8, 3072), np.float32), labels=[0] * 8),
        "too few labels": batch(data=np.zeros((8, 3072), np.uint8), labels=[0] * 7),
        "label out of range": batch(data=np.zeros((8, 3072), np.uint8), labels=[0] * 7 + [10]),
        "no labels": batch(data=np.zeros((8, 3072), np.uint8), fine_labels=[0] * 8),
    }


@pytest.mark.parametrize("kind", sorted(_damaged_cifar_payloads()))
def test_damaged_cifar_batch_raises_data_error(tmp_path: Path, kind: str) -> None:
    write_cifar10(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "test_batch"
    bad.write_bytes(_damaged_cifar_payloads()[kind])
    with pytest.raises(DataError) as excinfo:
        data.load_cifar10(tmp_path, train=False)
    assert_names_file(excinfo, bad)


def test_truncated_real_cifar_gz_raises_data_error(data_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with open(data_root / "cifar-10-batches-py" / "test_batch.gz", "rb") as f:
        (folder / "test_batch.gz").write_bytes(f.read(1 << 20))  # first MiB of 28 MB
    with pytest.raises(DataError, match="truncated") as excinfo:
        data.load_cifar10(tmp_path, train=False)
    assert_names_file(excinfo, folder / "test_batch.gz")


def _damage_idx(kind: str, images: np.ndarray, labels: np.ndarray) -> tuple[str, bytes]:
    """(which file to replace, its damaged content) for one kind of IDX damage."""
    img, lab = idx_bytes(images), idx_bytes(labels)
    return {
        "bad magic": ("images", b"\x00\x00\x09\x03" + img[4:]),
        "images as labels": ("labels", img),
        "truncated payload": ("images", img[:-100]),
        "trailing bytes": ("labels", lab + b"\x00"),
        "truncated header": ("images", img[:10]),
        "wrong image size": ("images", idx_bytes(images[:, :27, :])),
        "label count": ("labels", idx_bytes(labels[:-1])),
        "label out of range": ("labels", idx_bytes(np.append(labels[:-1], 10))),
        "bad gzip": ("images", gzip.compress(img)[:-20]),
        "empty": ("labels", b""),
    }[kind]


@pytest.mark.parametrize(
    "kind",
    ["bad magic", "images as labels", "truncated payload", "trailing bytes", "truncated header",
     "wrong image size", "label count", "label out of range", "bad gzip", "empty"],
)
def test_damaged_idx_raises_data_error(tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "FashionMNIST" / "raw"
    images, labels = write_mnist(folder)
    which, content = _damage_idx(kind, images, labels)
    bad = folder / f"t10k-{which}-idx{3 if which == 'images' else 1}-ubyte.gz"
    bad.unlink()
    bad = bad.with_suffix("")  # write the damaged file un-gzipped (unless it is gzip itself)
    bad.write_bytes(content)
    with pytest.raises(DataError) as excinfo:
        data.load_fashion_mnist(tmp_path, train=False)
    assert_names_file(excinfo, bad)
    x, _ = data.load_fashion_mnist(tmp_path, train=True)  # the intact split still loads
    assert torch.equal(x[:, 0], torch.from_numpy(images))


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_missing_files_raise_data_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataError, match="missing") as excinfo:
        load_dataset(name, tmp_path)
    spec = DATASETS[name]
    assert_names_file(excinfo, tmp_path / spec.folder / spec.train_files[0])
    assert str(tmp_path) in str(excinfo.value)


# ----------------------------------------------------------------------- root resolution


def test_resolve_root_order(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SHALLOWKERN_DATA", str(tmp_path / "from_env"))
    assert resolve_root(tmp_path / "arg") == tmp_path / "arg"  # the argument wins
    assert resolve_root(str(tmp_path / "arg")) == tmp_path / "arg"
    assert resolve_root() == tmp_path / "from_env"
    monkeypatch.delenv("SHALLOWKERN_DATA")
    with pytest.raises(DataError) as excinfo:
        resolve_root()
    message = str(excinfo.value)
    assert "root=" in message and "SHALLOWKERN_DATA" in message and "download=True" in message
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert resolve_root(download=True) == tmp_path / "cache" / "shallowkern" / "datasets"


def test_load_uses_env_root(tmp_path: Path, monkeypatch) -> None:
    images, labels = write_mnist(tmp_path / "MNIST" / "raw")
    monkeypatch.setenv("SHALLOWKERN_DATA", str(tmp_path))
    x, y = load_dataset("mnist", train=False)
    assert torch.equal(x[:, 0], torch.from_numpy(images)) and y.tolist() == labels.tolist()
    monkeypatch.delenv("SHALLOWKERN_DATA")
    with pytest.raises(DataError, match="SHALLOWKERN_DATA"):
        load_dataset("mnist")


# --------------------------------------------------------------- download (no network)


def _serve(monkeypatch, name: str, server: Path, files: dict[str, bytes], *, bad_md5=()) -> None:
    """Point DATASETS[name] at ``file://`` copies of ``files`` with their MD5s patched in."""
    server.mkdir(parents=True, exist_ok=True)
    downloads = []
    for filename, blob in files.items():
        (server / filename).write_bytes(blob)
        md5 = "0" * 32 if filename in bad_md5 else hashlib.md5(blob).hexdigest()
        downloads.append((filename, md5))
    spec = dataclasses.replace(
        DATASETS[name], urls=(server.as_uri() + "/",), downloads=tuple(downloads)
    )
    monkeypatch.setitem(DATASETS, name, spec)


def test_official_download_locations() -> None:
    assert DATASETS["cifar10"].urls[0] == "https://www.cs.toronto.edu/~kriz/"
    assert DATASETS["cifar10"].downloads == (
        ("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    )
    assert DATASETS["cifar100"].downloads[0][1] == "eb9058c3a382ffc7106e4002c42a8d85"
    assert DATASETS["mnist"].urls[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    assert "fashion-mnist" in DATASETS["fashion_mnist"].urls[0]


def test_download_mnist(tmp_path: Path, monkeypatch) -> None:
    images, labels = write_mnist(tmp_path / "server")
    files = {p.name: p.read_bytes() for p in (tmp_path / "server").iterdir()}
    _serve(monkeypatch, "mnist", tmp_path / "server", files)
    root = tmp_path / "root"
    with pytest.raises(DataError):
        load_dataset("mnist", root)  # off by default
    x, y = load_dataset("mnist", root, train=False, download=True)
    assert torch.equal(x[:, 0], torch.from_numpy(images)) and y.tolist() == labels.tolist()
    assert sorted(p.name for p in (root / "MNIST" / "raw").iterdir()) == sorted(files)


def test_download_falls_back_to_the_next_mirror(tmp_path: Path, monkeypatch) -> None:
    write_mnist(tmp_path / "server")
    files = {p.name: p.read_bytes() for p in (tmp_path / "server").iterdir()}
    _serve(monkeypatch, "mnist", tmp_path / "server", files)
    dead = (tmp_path / "no-such-mirror").as_uri() + "/"
    spec = DATASETS["mnist"]
    monkeypatch.setitem(DATASETS, "mnist", dataclasses.replace(spec, urls=(dead, *spec.urls)))
    x, _ = load_dataset("mnist", tmp_path / "root", download=True)
    assert x.shape == (5, 1, 28, 28)


def test_download_checksum_mismatch_deletes_file(tmp_path: Path, monkeypatch) -> None:
    write_mnist(tmp_path / "server")
    files = {p.name: p.read_bytes() for p in (tmp_path / "server").iterdir()}
    _serve(monkeypatch, "fashion_mnist", tmp_path / "server", files,
           bad_md5={"t10k-labels-idx1-ubyte.gz"})
    root = tmp_path / "root"
    with pytest.raises(DataError, match="checksum mismatch"):
        load_dataset("fashion_mnist", root, train=False, download=True)
    left = {p.name for p in (root / "FashionMNIST" / "raw").iterdir()}
    assert "t10k-labels-idx1-ubyte.gz" not in left and not any(n.endswith(".part") for n in left)


def test_download_with_mocked_opener(tmp_path: Path, monkeypatch) -> None:
    requested = []

    def fake_urlopen(url: str, timeout: float):
        requested.append(url)
        if len(requested) == 1:  # first mirror down, second one serves a bad file
            raise urllib.error.URLError("network is unreachable")
        return io.BytesIO(b"not what the MD5 says")

    monkeypatch.setattr(download, "urlopen", fake_urlopen)
    with pytest.raises(DataError, match="could not download") as excinfo:
        data.download_dataset("mnist", tmp_path)
    assert "network is unreachable" in str(excinfo.value)
    assert "checksum mismatch" in str(excinfo.value)
    # every mirror was tried, at the official locations
    assert requested[:2] == [base + "train-images-idx3-ubyte.gz" for base in DATASETS["mnist"].urls]
    assert not any((tmp_path / "MNIST" / "raw").iterdir())


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buffer.getvalue()


def test_download_cifar10_archive(tmp_path: Path, monkeypatch) -> None:
    blobs = write_cifar10(tmp_path / "src")
    archive = _tar_gz({f"cifar-10-batches-py/{k}": v for k, v in blobs.items()})
    _serve(monkeypatch, "cifar10", tmp_path / "server", {"cifar-10-python.tar.gz": archive})
    root = tmp_path / "root"
    x, y = load_dataset("cifar10", root, train=True, download=True)
    x_ref, y_ref = load_dataset("cifar10", tmp_path / "src", train=True)
    assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py"]  # archive removed


def test_download_cifar100_archive(tmp_path: Path, monkeypatch) -> None:
    written = write_cifar100(tmp_path / "src")
    folder = tmp_path / "src" / "cifar-100-python"
    archive = _tar_gz({f"cifar-100-python/{p.name}": p.read_bytes() for p in folder.iterdir()})
    _serve(monkeypatch, "cifar100", tmp_path / "server", {"cifar-100-python.tar.gz": archive})
    _, y = data.load_cifar100(tmp_path / "root", train=False, download=True, label_mode="coarse")
    assert y.tolist() == written["test"][1]["coarse_labels"].tolist()


def test_download_refuses_archive_escaping_root(tmp_path: Path, monkeypatch) -> None:
    archive = _tar_gz({"../escaped": b"x"})
    _serve(monkeypatch, "cifar10", tmp_path / "server", {"cifar-10-python.tar.gz": archive})
    with pytest.raises(DataError, match="cannot extract"):
        data.download_dataset("cifar10", tmp_path / "root")
    assert not (tmp_path / "escaped").exists()
