"""VGG-6-style networks with a RoDiB head or a standard J-output head (issue 14).

VGG-6 here: 4 conv layers + 2 FC layers. Backbone ``conv(c) conv(c) pool conv(2c) conv(2c)
pool global-average-pool`` (3x3 convs, padding 1, BatchNorm, ReLU, 2x2 max pools) gives 2c
features; the
head's two FC stages then map 2c -> D -> labels:

* ``head="standard"``: Linear(2c, D) -> ReLU -> Linear(D, J): J outputs, one per label.
* ``head="rodib"``:    MultiDelayLinear(2c, D, delays) -> ReLU -> MultiDelayLinear(D, 1,
  delays): one output unit, labels read at J arrival times (shallowkern.nn.RoDiBHead). With M
  delays and 2 stages there are up to C(M+1, 2) slots (M = 4: 10).

D is the "FC input size" of the output layer; D < J (e.g. D = 4 with 10 labels) is the regime
where the abstract reports the delayed head ahead.

Sweep family ``rodib_vgg6`` (params width=c, fc=D, head, delays=M), e.g. ``shallowkern profile
rodib_vgg6:8,fc=4,head=rodib,delays=4``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..nn.rodib import RoDiBHead


class VGG6Backbone(nn.Module):
    """(N, C, H, W) images -> (N, 2*width) features (4 convs, 2 pools, global average pool);
    ``bn``: BatchNorm2d after each conv (before ReLU)."""

    def __init__(self, width: int, in_channels: int = 3, bn: bool = True):
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"VGG6Backbone: width must be an int >= 1, got {width!r}")
        c = width

        def conv(a, b):
            norm = [nn.BatchNorm2d(b)] if bn else []
            return [nn.Conv2d(a, b, 3, padding=1, bias=not bn), *norm, nn.ReLU(inplace=True)]

        self.features = nn.Sequential(*conv(in_channels, c), *conv(c, c), nn.MaxPool2d(2),
                                      *conv(c, 2 * c), *conv(2 * c, 2 * c), nn.MaxPool2d(2),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_features = 2 * c

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


class RoDiBVGG6(nn.Module):
    """VGG-6-style network: ``VGG6Backbone(width)`` + a 2-stage head (module docstring).

    Args:
        width: c, the first conv layer's filters. fc: D, the hidden FC width (the output
            layer's input size). num_labels: J. head: "rodib" or "standard".
        delays: the RoDiB head's M delays (None: ``draw_delays(num_delays, 2)``).
        num_delays: M when ``delays`` is None. in_channels: image channels. bn: BatchNorm2d
            after each conv.
    Input (N, in_channels, H, W) with H, W >= 4; output (N, J) logits.
    """

    def __init__(self, width: int, fc: int, num_labels: int = 10, head: str = "rodib",
                 delays: Sequence[int] | None = None, num_delays: int = 4, in_channels: int = 3,
                 bn: bool = True):
        super().__init__()
        if head not in ("rodib", "standard"):
            raise ValueError(f"RoDiBVGG6: head must be 'rodib' or 'standard', got {head!r}")
        if isinstance(fc, bool) or not isinstance(fc, int) or fc < 1:
            raise ValueError(f"RoDiBVGG6: fc must be an int >= 1, got {fc!r}")
        self.backbone = VGG6Backbone(width, in_channels, bn)
        f = self.backbone.out_features
        if head == "rodib":
            self.head = RoDiBHead(f, num_labels, delays, hidden=(fc,),
                                  num_delays=None if delays is not None else num_delays)
        else:
            self.head = nn.Sequential(nn.Linear(f, fc), nn.ReLU(inplace=True),
                                      nn.Linear(fc, num_labels))
        self.head_kind = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def forward_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FlopCounterMode's forward FLOPs for one image (2 per multiply-add; the custom op's FLOP
    formula counts the multi-delay GEMMs)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, *input_shape)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(x)
    model.train()
    return counter.get_total_flops()


# ---------------------------------------------------------------------------------------------
# sweep-registry family
# ---------------------------------------------------------------------------------------------
def _build(p, *, in_channels, input_size, num_classes):
    return RoDiBVGG6(p["width"], p["fc"], num_classes, p["head"], num_delays=p["delays"],
                     in_channels=in_channels, bn=p["bn"])


def _cost(p, input_shape) -> dict:
    model = RoDiBVGG6(p["width"], p["fc"], 10, p["head"], num_delays=p["delays"],
                      in_channels=input_shape[0], bn=p["bn"])  # no class count here: 10 labels
    acts = []
    hooks = [m.register_forward_hook(lambda m, i, o: acts.append(o.numel()))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
             or type(m).__name__ == "MultiDelayLinear"]
    flops = forward_flops(model, tuple(input_shape))
    for h in hooks:
        h.remove()
    return {"params": param_count(model), "macs": flops // 2, "activations": sum(acts)}


def _register() -> None:
    from .registry import Family, Param, register_family

    register_family(Family(
        name="rodib_vgg6",
        description="VGG-6-style net (4 convs, GAP, 2 FC) with a RoDiB multi-delay single-output "
                    "head or a standard J-output head (Meir et al. 2024, issue 14)",
        params=(Param("width", int, default=8, minimum=1, help="first conv layer's filters"),
                Param("fc", int, default=4, minimum=1, help="hidden FC width (the output "
                      "layer's input size)"),
                Param("head", str, default="rodib", choices=("rodib", "standard"),
                      help="delayed single-output head or J-output head"),
                Param("delays", int, default=4, minimum=1, help="M delays of the RoDiB head "
                      "(greedy B_2 set; ignored by the standard head)"),
                Param("bn", bool, default=True, help="BatchNorm2d after each conv")),
        build=_build, width_param="width", cost=_cost, flags={"nobn": ("bn", False)},
        input_shape=(3, 32, 32)), replace=True)


_register()
