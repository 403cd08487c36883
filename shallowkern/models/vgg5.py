"""VGG-5 and SpinalVGG-5 for 28x28 grayscale (the SpinalNet MNIST_VGG models), and spinal_head.

Backbone (as in the public SpinalNet ``MNIST_VGG`` scripts, dipuk0506/SpinalNet, written anew):
four blocks of conv3x3 (padding 1) + BatchNorm2d + ReLU, 2 + 2 + 3 + 3 convs with
w, w | 2w, 2w | 4w, 4w, 4w | 4w, 4w, 4w filters (w = 64 in the paper), each block ending in a
2x2/2 max-pool: 28 -> 14 -> 7 -> 3 -> 1, so the flattened feature has 4w values (256).

Heads:
* ``VGG5`` (default head): Dropout -> Linear(4w, 512) -> BatchNorm1d -> ReLU -> Dropout ->
  Linear(512, classes).
* ``SpinalVGG5``: ``SpinalLinear(4w, classes, layer_width=128, num_layers=4, splits=2,
  batch_norm=True, dropout=0.5)``: the 128-wide spinal head of the scripts (halves of 128
  features when w = 64).

Both return logits (the scripts return log_softmax; use cross-entropy on logits).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..nn import SpinalLinear

_BLOCKS = ((1, 1), (2, 2), (4, 4, 4), (4, 4, 4))  # channel multiples of w per conv, per block


def _backbone(width: int, in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = in_channels
    for block in _BLOCKS:
        for mult in block:
            layers += [nn.Conv2d(c, mult * width, 3, padding=1, bias=False),
                       nn.BatchNorm2d(mult * width), nn.ReLU(inplace=True)]
            c = mult * width
        layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


def _side(input_size: int) -> int:
    side = input_size
    for _ in _BLOCKS:
        side //= 2
    if side < 1:
        raise ValueError(f"VGG5: input_size={input_size} is too small (need >= 16)")
    return side


class VGG5(nn.Module):
    """VGG-5 with the default head. width: filters of the first block (64 in the paper).

    Input (N, in_channels, input_size, input_size) -> logits (N, num_classes).
    """

    def __init__(self, width: int = 64, *, num_classes: int = 10, in_channels: int = 1,
                 input_size: int = 28, fc_width: int = 512, dropout: float = 0.5) -> None:
        super().__init__()
        for name, v in (("width", width), ("num_classes", num_classes), ("in_channels", in_channels),
                        ("fc_width", fc_width)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"VGG5: {name} must be an int >= 1, got {v!r}")
        self.width = width
        self.features = _backbone(width, in_channels)
        feat = 4 * width * _side(input_size) ** 2
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(feat, fc_width), nn.BatchNorm1d(fc_width),
            nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(fc_width, num_classes))
        self.input_shape = (in_channels, input_size, input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class SpinalVGG5(nn.Module):
    """VGG-5 with a SpinalNet head (``SpinalLinear``, layer_width ``spinal`` = 128 in the paper).

    Input (N, in_channels, input_size, input_size) -> logits (N, num_classes).
    """

    def __init__(self, width: int = 64, *, spinal: int = 128, num_layers: int = 4, splits: int = 2,
                 num_classes: int = 10, in_channels: int = 1, input_size: int = 28,
                 dropout: float = 0.5) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"SpinalVGG5: width must be an int >= 1, got {width!r}")
        self.width = width
        self.features = _backbone(width, in_channels)
        feat = 4 * width * _side(input_size) ** 2
        self.classifier = SpinalLinear(feat, num_classes, layer_width=spinal, num_layers=num_layers,
                                       splits=splits, batch_norm=True, dropout=dropout)
        self.input_shape = (in_channels, input_size, input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class SpinalHeaded(nn.Module):
    """``body`` followed by flatten and a SpinalLinear ``head`` (built by ``spinal_head``)."""

    def __init__(self, body: nn.Module, head: SpinalLinear) -> None:
        super().__init__()
        self.body, self.head = body, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))


def spinal_head(backbone: nn.Module, num_classes: int, *, input_shape: Sequence[int],
                layer_width: int = 128, num_layers: int = 4, splits: int = 2,
                activation: str = "relu", batch_norm: bool = True, dropout: float = 0.0,
                ) -> SpinalHeaded:
    """Put a SpinalLinear head on any backbone.

    If ``backbone`` has a ``features`` attribute (GeneralizedLeNet, GeneralizedVGG16, VGG5) that
    part is kept and its classifier dropped; otherwise the whole module is the body. The head's
    in_features is found by running the body on a zero input of ``input_shape`` (C, H, W) on the
    meta device. The body's parameters are shared, not copied.
    """
    body = getattr(backbone, "features", backbone)
    if not isinstance(body, nn.Module):
        raise TypeError(f"spinal_head: backbone must be an nn.Module, got {type(backbone).__name__}")
    if len(input_shape) < 1 or any(int(s) < 1 for s in input_shape):
        raise ValueError(f"spinal_head: input_shape must be positive (C, H, W), got {tuple(input_shape)}")
    p = next(body.parameters(), None)
    was_training = body.training
    body.eval()
    try:
        with torch.no_grad():
            probe = torch.zeros(1, *input_shape, device=p.device if p is not None else "cpu",
                                dtype=p.dtype if p is not None else torch.float32)
            in_features = int(math.prod(body(probe).shape[1:]))
    finally:
        body.train(was_training)
    ref = p if p is not None else probe
    head = SpinalLinear(in_features, num_classes, layer_width=layer_width, num_layers=num_layers,
                        splits=splits, activation=activation, batch_norm=batch_norm,
                        dropout=dropout, device=ref.device, dtype=ref.dtype)
    return SpinalHeaded(body, head)


# ---------------------------------------------------------------------------------------------
# sweep families
# ---------------------------------------------------------------------------------------------
def _register() -> None:
    from .registry import Family, Param, register_family

    def build_vgg5(p: Mapping[str, Any], *, in_channels: int, input_size: int, num_classes: int):
        return VGG5(p["width"], fc_width=p["fc"], num_classes=num_classes, in_channels=in_channels,
                    input_size=input_size)

    def build_spinal(p: Mapping[str, Any], *, in_channels: int, input_size: int, num_classes: int):
        return SpinalVGG5(p["width"], spinal=p["spinal"], num_classes=num_classes,
                          in_channels=in_channels, input_size=input_size)

    register_family(Family(
        name="vgg5", description="VGG-5 (2+2+3+3 conv3x3+BN) with the default FC head (SpinalNet)",
        params=(Param("width", int, default=64, minimum=1, help="first block's filters"),
                Param("fc", int, default=512, minimum=1, help="hidden width of the FC head")),
        build=build_vgg5, width_param="width"), replace=True)
    register_family(Family(
        name="spinal_vgg5", description="VGG-5 with a SpinalNet head (Kabir et al.)",
        params=(Param("width", int, default=64, minimum=1, help="first block's filters"),
                Param("spinal", int, default=128, minimum=1, help="neurons per spinal layer")),
        build=build_spinal, width_param="width"), replace=True)


_register()
