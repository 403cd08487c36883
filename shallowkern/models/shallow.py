"""Generalized LeNet-5 and width-scaled VGG-16 for 32x32 inputs, built from WideConv2d.

GeneralizedLeNet (Meir et al., Sci Rep 2023): conv1 5x5 (C_in -> d1) + ReLU + 2x2 max-pool,
conv2 5x5 (d1 -> d2 = k*d1) + ReLU + 2x2 max-pool, then FC 25*d2 -> 120 -> 84 -> classes.
For 32x32x3 inputs its multiply-adds are 58,800*d1 + 2,500*d1*d2 + 3,000*d2 + 10,920.
The conservation law asks sqrt(map size) * depth to be equal across conv layers:
28*d1 = 10*d2, i.e. k = 2.8.
"""

from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import nn

from ..nn import WideConv2d


class GeneralizedLeNet(nn.Module):
    """LeNet-5 with d1 first-layer and d2 (= k*d1) second-layer filters.

    Args:
        d1: filters of conv1. d2: filters of conv2; or give ``k`` (d2 = round(k*d1));
            neither: k = 2.8, the conservation-law optimum.
        fc: hidden widths of the classifier. in_channels, input_size: the image (C, S, S).
    Input (N, in_channels, input_size, input_size) -> logits (N, num_classes).
    """

    def __init__(self, d1: int, d2: int | None = None, k: float | None = None,
                 fc: Sequence[int] = (120, 84), num_classes: int = 10, in_channels: int = 3,
                 input_size: int = 32):
        super().__init__()
        if d2 is not None and k is not None:
            raise ValueError("GeneralizedLeNet: give d2 or k, not both")
        if k is not None and not (math.isfinite(k) and k > 0):
            raise ValueError(f"GeneralizedLeNet: k must be a positive finite number, got {k}")
        d2 = d2 if d2 is not None else max(1, round((2.8 if k is None else k) * d1))
        if d1 < 1 or d2 < 1:
            raise ValueError(f"GeneralizedLeNet: d1 and d2 must be >= 1, got d1={d1}, d2={d2}")
        side = ((input_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"GeneralizedLeNet: input_size={input_size} is too small (need >= 16)")
        self.d1, self.d2 = d1, d2
        self.features = nn.Sequential(
            WideConv2d(in_channels, d1, 5, activation="relu", pool=2),
            WideConv2d(d1, d2, 5, activation="relu", pool=2),
        )
        widths = [d2 * side * side, *fc]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.classifier = nn.Sequential(*layers, nn.Linear(widths[-1], num_classes))
        self.input_shape = (in_channels, input_size, input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))

    def layer_report(self) -> list[dict]:
        return layer_report(self, self.input_shape)


_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class GeneralizedVGG16(nn.Module):
    """VGG-16 for 32x32 inputs with every conv width scaled by ``width`` (1.0 = 64..512).

    13 conv 3x3 (pad 1) + ReLU layers, the last of each of the 5 blocks fused with its 2x2 pool
    (WideConv2d); ``batch_norm=True`` inserts BatchNorm2d after each conv (then unfused).
    Classifier: ``fc`` hidden widths then num_classes. Input (N, C, 32, 32).
    """

    def __init__(self, width: float = 1.0, num_classes: int = 10, in_channels: int = 3,
                 fc: Sequence[int] = (), batch_norm: bool = False):
        super().__init__()
        if not (math.isfinite(width) and width > 0):
            raise ValueError(f"GeneralizedVGG16: width must be a positive number, got {width}")
        layers: list[nn.Module] = []
        c = in_channels
        for i, v in enumerate(_VGG16):
            if v == "M":
                continue
            out = max(1, round(v * width))
            pool = 2 if i + 1 < len(_VGG16) and _VGG16[i + 1] == "M" else None
            if batch_norm:
                layers += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
                layers += [nn.MaxPool2d(2)] if pool else []
            else:
                layers.append(WideConv2d(c, out, 3, padding=1, activation="relu", pool=pool))
            c = out
        self.width = width
        self.features = nn.Sequential(*layers)
        widths = [c, *fc]
        head: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            head += [nn.Linear(a, b), nn.ReLU()]
        self.classifier = nn.Sequential(*head, nn.Linear(widths[-1], num_classes))
        self.input_shape = (in_channels, 32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))

    def layer_report(self) -> list[dict]:
        return layer_report(self, self.input_shape)


def layer_report(model: nn.Module, input_shape: Sequence[int]) -> list[dict]:
    """Per conv/linear layer: params, MACs (per image), output map and the conservation quantity.

    Runs one image through a meta-device copy (no memory, any width). For a conv, ``map`` is its
    output before pooling (H, W) and ``conservation`` = sqrt(H*W) * depth (out channels).
    """
    meta = copy.deepcopy(model).to("meta")
    rows: list[dict] = []

    def hook(name):
        def fn(mod, inp, out):
            x = inp[0]
            params = sum(p.numel() for p in mod.parameters(recurse=False))
            if isinstance(mod, nn.Conv2d):
                n, c, h, w = x.shape
                pads = mod._reversed_padding_repeated_twice  # (left, right, top, bottom)
                (kh, kw), (sh, sw), (dh, dw) = mod.kernel_size, mod.stride, mod.dilation
                oh = (h + pads[2] + pads[3] - dh * (kh - 1) - 1) // sh + 1
                ow = (w + pads[0] + pads[1] - dw * (kw - 1) - 1) // sw + 1
                macs = oh * ow * mod.out_channels * (c // mod.groups) * kh * kw
                rows.append(dict(name=name, type=type(mod).__name__, params=params, macs=macs,
                                 map=(oh, ow), depth=mod.out_channels,
                                 conservation=math.sqrt(oh * ow) * mod.out_channels))
            elif isinstance(mod, nn.Linear):
                rows.append(dict(name=name, type="Linear", params=params,
                                 macs=mod.in_features * mod.out_features, map=None,
                                 depth=mod.out_features, conservation=None))
        return fn

    for name, mod in meta.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            mod.register_forward_hook(hook(name))
    with torch.no_grad():
        meta(torch.empty(1, *input_shape, device="meta"))
    return rows
