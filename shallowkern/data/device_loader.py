"""Device-resident batching with on-device CIFAR-style augmentation, and a stratified split."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["DeviceLoader", "train_val_split"]

Normalize = Literal["minus_one_one", "standardize"] | None


def check_loader_args(x: torch.Tensor, y: torch.Tensor, batch_size: int, pad: int) -> None:
    """The argument checks DeviceLoader and HostLoader share (ValueError naming the argument)."""
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"x must be uint8 (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")


class DeviceLoader:
    """Iterate over shuffled, augmented, normalised batches of an in-memory uint8 dataset.

    The whole dataset is copied to ``device`` once (as uint8, 4x smaller than float), and each
    batch is gathered, augmented and converted there, so training is never input-bound.

    Args:
        x: uint8 images (N, C, H, W), e.g. from ``load_dataset``.
        y: integer labels (N,); yielded as int64.
        batch_size: samples per batch; the last batch is smaller unless ``drop_last``.
        device: where data lives and batches are produced; default CUDA if available, else CPU.
        shuffle: draw a fresh permutation (on the device) every epoch.
        augment: random translation by up to ``pad`` pixels with zero fill (a random
            ``H x W`` crop of the image zero-padded by ``pad``), then, if ``flip``, a random
            horizontal flip; drawn independently per image.
        normalize: ``"minus_one_one"`` maps pixels to [-1, 1] (``x / 127.5 - 1``);
            ``"standardize"`` computes ``(x / 255 - mean) / std`` per channel (``mean``/``std``
            in [0, 1] units, e.g. ``DATASETS["cifar10"].mean``); ``None`` only casts (0..255).
        generator: ``torch.Generator`` on ``device`` for shuffling and augmentation; ``seed``
            creates one instead. With neither, torch's default generator is used.
        dtype: floating dtype of the yielded images.
        channels_last: yield images in ``torch.channels_last`` memory format.

    Iterating yields ``(x, y)``: ``x`` of ``dtype`` (B, C, H, W) and ``y`` int64 (B,), both
    on ``device``. ``len()`` is the number of batches per epoch.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        shuffle: bool = True,
        augment: bool = False,
        pad: int = 4,
        flip: bool = True,
        normalize: Normalize = "minus_one_one",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
    ) -> None:
        check_loader_args(x, y, batch_size, pad)
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        if generator is not None and seed is not None:
            raise ValueError("pass either generator or seed, not both")

        self.device = torch.device(
            device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.x = x.to(self.device).contiguous()
        self.y = y.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.pad = pad
        self.flip = flip
        self.drop_last = drop_last
        self.dtype = dtype
        self.channels_last = channels_last
        self.generator = (
            torch.Generator(self.device).manual_seed(seed) if seed is not None else generator
        )
        self._offset, self._divisor = self._normalization(normalize, mean, std, x.shape[1])

    def _normalization(
        self, normalize: Normalize, mean: Sequence[float] | None,
        std: Sequence[float] | None, channels: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (offset, divisor), shape (1, C, 1, 1): output = (x - offset) / divisor.

        One form for every mode, so conversion is the same two elementwise ops; they run in
        at least float32 (then cast to ``dtype``) so half-precision outputs are rounded once.
        """
        if normalize == "minus_one_one":
            offset, divisor = [127.5] * channels, [127.5] * channels
        elif normalize == "standardize":
            if mean is None or std is None or len(mean) != channels or len(std) != channels:
                raise ValueError(f'normalize="standardize" needs mean and std of {channels} values')
            offset = [255.0 * m for m in mean]
            divisor = [255.0 * s for s in std]
        elif normalize is None:
            offset, divisor = [0.0] * channels, [1.0] * channels
        else:
            raise ValueError(f"unknown normalize {normalize!r}")
        compute = torch.promote_types(self.dtype, torch.float32)
        offset_t, divisor_t = (
            torch.tensor(v, dtype=compute, device=self.device).view(1, -1, 1, 1)
            for v in (offset, divisor)
        )
        return offset_t, divisor_t

    def __len__(self) -> int:
        n = self.y.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.y.shape[0]
        if self.shuffle:
            order = torch.randperm(n, device=self.device, generator=self.generator)
        else:
            order = torch.arange(n, device=self.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[start : start + self.batch_size]
            xb = self.x[idx]
            if self.augment:
                xb = self._augment(xb)
            yield self._to_float(xb), self.y[idx]

    def _augment(self, xb: torch.Tensor) -> torch.Tensor:
        """Random translate (zero fill) + horizontal flip of a uint8 (B, C, H, W) batch.

        Pads the batch once, then gathers every output pixel with per-image row/column
        indices (flip = reversed column indices), so the whole batch is one ``gather`` over the
        flattened padded planes (measured ~10x faster on CPU than the equivalent 4-index
        advanced indexing, which was 30% of a d1 = 4 LeNet training step; same values).
        """
        b, c, h, w = xb.shape
        dev, p = xb.device, self.pad
        if p > 0:
            xb = F.pad(xb, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (b,), device=dev, generator=self.generator)
            dx = torch.randint(0, 2 * p + 1, (b,), device=dev, generator=self.generator)
        else:
            dy = dx = torch.zeros(b, dtype=torch.long, device=dev)
        rows = dy[:, None] + torch.arange(h, device=dev)  # (B, H) rows of the padded image
        cols = dx[:, None] + torch.arange(w, device=dev)  # (B, W)
        if self.flip:
            flipped = torch.rand(b, device=dev, generator=self.generator) < 0.5
            cols = torch.where(flipped[:, None], cols.flip(1), cols)
        flat = (rows[:, :, None] * xb.shape[3] + cols[:, None, :]).view(b, 1, h * w)
        return xb.reshape(b, c, -1).gather(2, flat.expand(b, c, h * w)).view(b, c, h, w)

    def _to_float(self, xb: torch.Tensor) -> torch.Tensor:
        out = xb.to(self._divisor.dtype)  # a fresh tensor: normalised in place (same values)
        out = out.sub_(self._offset).div_(self._divisor).to(self.dtype)
        if self.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out


def train_val_split(
    x: torch.Tensor,
    y: torch.Tensor,
    val_fraction: float | None = None,
    *,
    val_size: int | None = None,
    seed: int = 0,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Split ``(x, y)`` into stratified ``((x_train, y_train), (x_val, y_val))``.

    ``x`` is any tensor with N rows, ``y`` integer labels (N,) >= 0. The validation set has
    ``val_size`` samples, or ``round(val_fraction * N)`` (default fraction 0.1); each class
    contributes in proportion to its count (largest-remainder rounding, so the total is
    exact). Samples are chosen at random with ``seed``; both parts keep the original order.
    """
    n = y.shape[0]
    if n == 0 or y.dim() != 1 or x.shape[0] != n or y.dtype.is_floating_point:
        raise ValueError(
            f"need x with N > 0 rows and integer y (N,), got {tuple(x.shape)} and {y.dtype}"
        )
    if val_fraction is not None and val_size is not None:
        raise ValueError("pass either val_fraction or val_size, not both")
    if val_size is None:
        fraction = 0.1 if val_fraction is None else val_fraction
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"val_fraction must be in [0, 1], got {fraction}")
        val_size = round(fraction * n)
    if not 0 <= val_size <= n:
        raise ValueError(f"val_size must be in [0, {n}], got {val_size}")

    labels = y.detach().cpu().long()
    counts = torch.bincount(labels)
    # Integer largest-remainder apportionment: floor of each class's share, then one more for
    # the classes with the largest remainders (ties to the lower class) until the sum is exact.
    quota, remainder = torch.div(counts * val_size, n, rounding_mode="floor"), counts * val_size % n
    extra = torch.argsort(remainder, descending=True, stable=True)[: val_size - int(quota.sum())]
    quota[extra] += 1

    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    grouped = perm[torch.argsort(labels[perm], stable=True)]  # by class, random within a class
    first_of_class = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - first_of_class[labels[grouped]]  # position within its class
    is_val = rank < quota[labels[grouped]]
    train_idx, val_idx = grouped[~is_val].sort().values, grouped[is_val].sort().values
    return (
        (x[train_idx.to(x.device)], y[train_idx.to(y.device)]),
        (x[val_idx.to(x.device)], y[val_idx.to(y.device)]),
    )
