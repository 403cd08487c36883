"""HostLoader: the conventional input pipeline, as a plain PyTorch training script has it.

A ``torch.utils.data.Dataset`` that augments one uint8 image at a time on the host (random
translation by up to ``pad`` pixels with zero fill, random horizontal flip, then ``x / 127.5 - 1``,
the steps of torchvision's ``RandomCrop(padding=pad)``, ``RandomHorizontalFlip`` and a [-1, 1]
``Normalize``), batched by a ``DataLoader`` with worker processes and pinned memory, each batch
copied to the device with ``non_blocking=True``. It yields what ``DeviceLoader`` yields (same
augmentation distribution, same normalisation), so a sweep can compare the two pipelines on the
same recipe: this one is the "plain PyTorch" side of the comparison.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from .device_loader import check_loader_args

__all__ = ["HostLoader"]


class _AugmentedImages(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, augment: bool, pad: int, flip: bool,
                 seed: int):
        self.x, self.y = x, y
        self.augment, self.pad, self.flip = augment, pad, flip
        self.seed = seed
        self._gen: torch.Generator | None = None

    def _generator(self) -> torch.Generator:
        """This process's augmentation generator: seeded from ``seed`` in the main process, and
        in a worker from the worker's seed (which the DataLoader derives from its generator),
        so a seeded loader repeats itself with or without workers."""
        if self._gen is None:
            info = get_worker_info()
            self._gen = torch.Generator().manual_seed(
                self.seed if info is None else info.seed % 2**63)
        return self._gen

    def __len__(self) -> int:
        return self.y.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.x[i]
        if self.augment:
            _, h, w = img.shape
            p = self.pad
            if p > 0:  # a random H x W crop of the zero-padded image
                padded = torch.nn.functional.pad(img, (p, p, p, p))
                dy, dx = torch.randint(0, 2 * p + 1, (2,), generator=self._generator()).tolist()
                img = padded[:, dy:dy + h, dx:dx + w]
            if self.flip and torch.rand((), generator=self._generator()) < 0.5:
                img = img.flip(-1)
        return (img.float() - 127.5) / 127.5, self.y[i]  # as DeviceLoader, bit for bit


class HostLoader:
    """Batches of ``(x, y)`` on ``device`` from host-side per-image augmentation.

    Args:
        x: uint8 (N, C, H, W) images on the CPU; y: int64 labels (N,).
        batch_size, shuffle, augment, pad, flip: as ``DeviceLoader``.
        device: where batches go. seed: seeds shuffling and the workers' augmentation.
        workers: DataLoader worker processes (default: 0 on a CPU device, else up to 8 of the
            machine's cores, as a tuned plain-PyTorch script would use).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *,
                 device: torch.device | str = "cpu", shuffle: bool = True, augment: bool = True,
                 pad: int = 4, flip: bool = True, seed: int = 0, workers: int | None = None):
        check_loader_args(x, y, batch_size, pad)
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        if workers is None:
            workers = min(8, os.cpu_count() or 1) if cuda else 0
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self._loader = DataLoader(
            _AugmentedImages(x.cpu().contiguous(), y.cpu().long(), augment, pad, flip, seed + 1),
            batch_size=batch_size, shuffle=shuffle, num_workers=workers, pin_memory=cuda,
            persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for xb, yb in self._loader:
            yield (xb.to(self.device, non_blocking=True),
                   yb.to(self.device, non_blocking=True))
