"""The lab's 10-conv "VGG-11*" (AFCC, Tzach et al. 2025): VGG-16's first ten conv layers.

Ten 3x3 (pad 1) conv + BatchNorm2d + ReLU layers with widths 64, 64 | 128, 128 | 256, 256, 256 |
512, 512, 512 (x ``width``), a 2x2 max-pool after each group (4 pools: 32 -> 2), then one
bias-free Linear(512*width * 2 * 2 = 2048*width, classes) read-out. Input (N, C, 32, 32).

The convs are plain nn.Conv2d (BN follows each), so AFCC can swap any of them for an
``AFCCConv2d`` and the read-out for an ``AFCCLinear`` (``shallowkern.afcc.prune``).
Registered as the sweep family ``vgg11`` (width parameter ``width``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .registry import Family, Param, register_family
from .shallow import layer_report

CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M")


class VGG11Star(nn.Module):
    """VGG-11* with every conv width scaled by ``width`` (1.0 = 64..512, read-out 2048 -> classes).

    ``features`` is an nn.Sequential of Conv2d, BatchNorm2d, ReLU (and MaxPool2d) modules;
    ``conv_names()`` lists the ten conv modules' names in order; ``classifier`` is the
    bias-free Linear. Input (N, in_channels, input_size, input_size) with input_size % 16 == 0.
    """

    def __init__(self, width: float = 1.0, num_classes: int = 10, in_channels: int = 3,
                 input_size: int = 32):
        super().__init__()
        if not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
            raise ValueError(f"VGG11Star: width must be a positive number, got {width!r}")
        if input_size < 16 or input_size % 16:
            raise ValueError(f"VGG11Star: input_size must be a multiple of 16, got {input_size}")
        layers: list[nn.Module] = []
        c = in_channels
        for v in CONFIG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            out = max(1, round(v * width))
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            c = out
        self.width = width
        self.features = nn.Sequential(*layers)
        side = input_size // 16
        self.classifier = nn.Linear(c * side * side, num_classes, bias=False)
        self.input_shape = (in_channels, input_size, input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))

    def conv_names(self) -> list[str]:
        return [f"features.{i}" for i, m in enumerate(self.features) if isinstance(m, nn.Conv2d)]

    def layer_report(self) -> list[dict]:
        return layer_report(self, self.input_shape)


def _build(p, *, in_channels, input_size, num_classes):
    return VGG11Star(p["width"], num_classes=num_classes, in_channels=in_channels,
                     input_size=input_size)


register_family(Family(
    name="vgg11", description="the lab's 10-conv VGG-11* (conv+BN+ReLU, bias-free read-out)",
    params=(Param("width", float, default=1.0, minimum=0.0,
                  help="conv width multiplier (1.0 = 64..512)"),),
    build=_build, width_param="width"))
