"""DeviceLoader (batching, on-device augmentation, normalisation) and train_val_split."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from shallowkern.data import DATASETS, DeviceLoader, load_dataset, train_val_split

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def cifar_root() -> Path:
    root = Path(os.environ.get("SHALLOWKERN_DATA", REPO.parent / "shared" / "datasets"))
    if not (root / "cifar-10-batches-py").is_dir():
        pytest.skip(f"CIFAR-10 not found under {root} (set SHALLOWKERN_DATA)")
    return root


def random_images(n: int, c: int = 3, h: int = 8, w: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def epoch(loader: DeviceLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader)


def find_transform(out: torch.Tensor, src: torch.Tensor, pad: int) -> list[tuple[int, int, bool]]:
    """Every (dy, dx, flipped) whose crop of the zero-padded ``src`` equals ``out`` exactly."""
    _, h, w = src.shape
    padded = F.pad(src, (pad, pad, pad, pad))
    matches = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            matches += [(dy, dx, False)] if torch.equal(out, crop) else []
            matches += [(dy, dx, True)] if torch.equal(out, crop.flip(-1)) else []
    return matches


# ---------------------------------------------------------------------------- augmentation


def test_augmentation_is_a_translation_and_flip_per_image() -> None:
    n, pad = 96, 2
    x = random_images(n)
    loader = DeviceLoader(x, torch.arange(n), 32, device="cpu", augment=True, pad=pad,
                          normalize=None, seed=0)
    seen = set()
    for xb, yb in loader:
        assert xb.shape == (len(yb), 3, 8, 10) and xb.dtype == torch.float32
        for out, i in zip(xb, yb.tolist()):  # y = sample index identifies the source image
            matches = find_transform(out.to(torch.uint8), x[i], pad)
            assert matches, f"sample {i} is not a shifted/flipped crop of its input"
            seen.update(matches)
    # drawn per image: many of the 25 shifts in [-pad, pad]^2 and both flip states occur
    assert len({(dy, dx) for dy, dx, _ in seen}) > 15
    assert {f for *_, f in seen} == {False, True}


def test_augmentation_switches() -> None:
    x = random_images(16)
    plain = DeviceLoader(x, torch.arange(16), 16, device="cpu", shuffle=False, normalize=None)
    (xb, _), = epoch(plain)
    assert torch.equal(xb, x.float())  # augment=False: untouched
    identity = DeviceLoader(x, torch.arange(16), 16, device="cpu", shuffle=False, augment=True,
                            pad=0, flip=False, normalize=None)
    (xb, _), = epoch(identity)
    assert torch.equal(xb, x.float())
    flip_only = DeviceLoader(x, torch.arange(16), 16, device="cpu", shuffle=False, augment=True,
                             pad=0, normalize=None, seed=1)
    (xb, _), = epoch(flip_only)
    flipped = [torch.equal(o, i.float().flip(-1)) for o, i in zip(xb, x)]
    assert all(f or torch.equal(o, i.float()) for f, o, i in zip(flipped, xb, x))
    assert 0 < sum(flipped) < 16


def test_translation_fills_with_zeros() -> None:
    x = torch.full((64, 1, 6, 6), 200, dtype=torch.uint8)
    loader = DeviceLoader(x, torch.zeros(64), 64, device="cpu", augment=True, pad=3,
                          normalize=None, seed=0)
    (xb, _), = epoch(loader)
    # a shift by (dy, dx) leaves exactly (6 - |dy|) * (6 - |dx|) image pixels
    kept = (xb == 200).sum((1, 2, 3))
    assert set(torch.unique(xb).tolist()) == {0.0, 200.0}
    assert kept.min() >= 9 and kept.max() == 36 and len(torch.unique(kept)) > 3


# ------------------------------------------------------------------------------ batching


@pytest.mark.parametrize("drop_last, sizes", [(False, [4, 4, 2]), (True, [4, 4])])
def test_batch_sizes_and_len(drop_last: bool, sizes: list[int]) -> None:
    loader = DeviceLoader(random_images(10), torch.arange(10), 4, device="cpu",
                          drop_last=drop_last, seed=0)
    assert len(loader) == len(sizes)
    assert [len(yb) for _, yb in loader] == sizes


def test_shuffle_covers_every_sample_once_per_epoch() -> None:
    n = 103
    loader = DeviceLoader(random_images(n), torch.arange(n), 16, device="cpu", seed=3)
    orders = []
    for _ in range(2):
        ys = torch.cat([yb for _, yb in loader])
        assert sorted(ys.tolist()) == list(range(n))
        orders.append(ys)
    assert not torch.equal(orders[0], orders[1])  # a fresh permutation each epoch
    assert not torch.equal(orders[0], torch.arange(n))


def test_no_shuffle_keeps_order_and_pairs_x_with_y() -> None:
    x = random_images(10)
    loader = DeviceLoader(x, torch.arange(10) * 7, 3, device="cpu", shuffle=False,
                          normalize=None)
    xs, ys = zip(*loader)
    assert torch.equal(torch.cat(ys), torch.arange(10) * 7)
    assert torch.equal(torch.cat(xs), x.float())


def test_seed_makes_epochs_reproducible() -> None:
    x, y = random_images(40), torch.arange(40)
    kwargs = dict(device="cpu", augment=True)
    a = [epoch(DeviceLoader(x, y, 8, seed=7, **kwargs)) for _ in range(2)]
    loader = DeviceLoader(x, y, 8, generator=torch.Generator().manual_seed(7), **kwargs)
    b = [epoch(loader), epoch(loader)]  # the same generator drives both epochs
    c = epoch(DeviceLoader(x, y, 8, seed=8, **kwargs))
    for (xa, ya), (xb, yb) in zip(a[0], b[0]):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not all(torch.equal(p[1], q[1]) for p, q in zip(b[0], b[1]))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a[0], c))
    with pytest.raises(ValueError, match="generator or seed"):
        DeviceLoader(x, y, 8, seed=1, generator=torch.Generator())


# ------------------------------------------------------------------- conversion / devices


def test_minus_one_one_range_is_exact() -> None:
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).repeat(2, 3, 1, 1)
    (xb, _), = epoch(DeviceLoader(x, torch.zeros(2), 2, device="cpu", shuffle=False))
    assert xb.min() == -1.0 and xb.max() == 1.0
    torch.testing.assert_close(xb, x.float() / 127.5 - 1)


def test_standardize_uses_per_channel_stats() -> None:
    spec = DATASETS["cifar10"]
    x = random_images(4)
    loader = DeviceLoader(x, torch.zeros(4), 4, device="cpu", shuffle=False,
                          normalize="standardize", mean=spec.mean, std=spec.std)
    (xb, _), = epoch(loader)
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    torch.testing.assert_close(xb, (x.float() / 255 - mean) / std)
    with pytest.raises(ValueError, match="mean and std"):
        DeviceLoader(x, torch.zeros(4), 4, normalize="standardize")
    with pytest.raises(ValueError, match="normalize"):
        DeviceLoader(x, torch.zeros(4), 4, normalize="zero_one")


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dtype_and_channels_last(dtype: torch.dtype) -> None:
    x = random_images(6)
    loader = DeviceLoader(x, torch.zeros(6, dtype=torch.int32), 6, device="cpu", augment=True,
                          dtype=dtype, channels_last=True, seed=0)
    (xb, yb), = epoch(loader)
    assert xb.dtype == dtype and yb.dtype == torch.int64
    assert xb.is_contiguous(memory_format=torch.channels_last)
    assert -1 <= xb.min() and xb.max() <= 1


def test_input_validation() -> None:
    x = random_images(4)
    with pytest.raises(ValueError, match="uint8"):
        DeviceLoader(x.float(), torch.zeros(4), 2)
    with pytest.raises(ValueError, match="y must have shape"):
        DeviceLoader(x, torch.zeros(3), 2)
    with pytest.raises(ValueError, match="batch_size"):
        DeviceLoader(x, torch.zeros(4), 0)


def test_default_device_and_residency() -> None:
    loader = DeviceLoader(random_images(4), torch.zeros(4), 2)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert loader.device.type == expected and loader.x.device.type == expected
    assert all(xb.device.type == expected and yb.device.type == expected for xb, yb in loader)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_the_cpu_transform() -> None:
    x, pad = random_images(64), 4
    loader = DeviceLoader(x, torch.arange(64), 64, device="cuda", augment=True, normalize=None,
                          seed=0)
    (xb, yb), = epoch(loader)
    assert xb.is_cuda and yb.is_cuda
    for out, i in zip(xb.cpu(), yb.tolist()):
        assert find_transform(out.to(torch.uint8), x[i], pad)


def test_real_cifar_epoch(cifar_root: Path) -> None:
    x, y = load_dataset("cifar10", cifar_root, train=False)
    loader = DeviceLoader(x, y, 500, device="cpu", augment=True, seed=0, drop_last=True)
    count = 0
    for xb, yb in loader:
        assert xb.shape == (500, 3, 32, 32) and -1 <= xb.min() and xb.max() <= 1
        count += len(yb)
    assert count == 10000 and len(loader) == 20


# ------------------------------------------------------------------------ train_val_split


def test_split_is_stratified_disjoint_and_complete() -> None:
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)[torch.randperm(100)]
    x = torch.arange(100).view(100, 1).repeat(1, 3)  # rows identify samples
    (x_tr, y_tr), (x_val, y_val) = train_val_split(x, y, 0.2, seed=0)
    assert torch.bincount(y_val).tolist() == [10, 6, 4]
    assert torch.bincount(y_tr).tolist() == [40, 24, 16]
    ids = torch.cat([x_tr[:, 0], x_val[:, 0]])
    assert sorted(ids.tolist()) == list(range(100))
    assert torch.equal(y[x_tr[:, 0]], y_tr) and torch.equal(y[x_val[:, 0]], y_val)
    assert torch.all(x_tr[1:, 0] > x_tr[:-1, 0])  # original order kept


def test_split_val_size_is_exact_and_seeded() -> None:
    y = torch.tensor([0, 1, 2] * 3 + [3])
    x = torch.arange(10)
    (_, _), (x_val, y_val) = train_val_split(x, y, val_size=4, seed=1)
    assert len(y_val) == 4 and torch.bincount(y_val, minlength=4).max() <= 2
    (_, _), (x_again, _) = train_val_split(x, y, val_size=4, seed=1)
    assert torch.equal(x_val, x_again)
    picks = {tuple(train_val_split(x, y, val_size=4, seed=s)[1][0].tolist()) for s in range(10)}
    assert len(picks) > 1
    with pytest.raises(ValueError, match="not both"):
        train_val_split(x, y, 0.1, val_size=2)
    with pytest.raises(ValueError, match="val_size"):
        train_val_split(x, y, val_size=11)


def test_split_default_and_real_cifar(cifar_root: Path) -> None:
    x, y = load_dataset("cifar10", cifar_root, train=True)
    (x_tr, y_tr), (x_val, y_val) = train_val_split(x, y, seed=0)  # default 10%
    assert torch.bincount(y_val).tolist() == [500] * 10
    assert x_tr.shape == (45000, 3, 32, 32) and x_val.dtype == torch.uint8
