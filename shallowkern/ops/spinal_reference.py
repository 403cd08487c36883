"""The SpinalNet head in plain PyTorch: shapes, argument checks and the reference composition.

The reference is the fallback, the test oracle's sibling and the benchmark baseline ("eager");
math, split rule and backward formulas are in ``shallowkern.ops.spinal_linear``'s docstring.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

ACTIVATIONS = ("relu", "tanh", "sigmoid", "identity")
_ACT_FN: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "identity": lambda t: t,
}


# ---------------------------------------------------------------------------------------------
# shapes and checks
# ---------------------------------------------------------------------------------------------
def split_sizes(in_features: int, splits: int) -> list[int]:
    """Column counts of the S splits of ``in_features`` (tensor_split rule, see module doc)."""
    q, r = in_features // splits, in_features % splits  # (not divmod: SymInt under fake tensors)
    return [q + 1 if s < r else q for s in range(splits)]


def split_offsets(in_features: int, splits: int) -> list[int]:
    """Start column of each split (length S + 1, last = in_features)."""
    offs = [0]
    for n in split_sizes(in_features, splits):
        offs.append(offs[-1] + n)
    return offs


def check_config(in_features: int, out_features: int, layer_width: int, num_layers: int,
                 splits: int, activation: str) -> None:
    """Validate SpinalLinear hyper-parameters; errors name the argument."""
    for name, v, lo in (("in_features", in_features, 1), ("out_features", out_features, 1),
                        ("layer_width", layer_width, 1), ("num_layers", num_layers, 1),
                        ("splits", splits, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"spinal_linear: {name} must be an int >= {lo}, got {v!r}")
    if splits > in_features:
        raise ValueError(f"spinal_linear: splits={splits} must be <= in_features={in_features} "
                         "(every split needs at least one column)")
    if activation not in ACTIVATIONS:
        raise ValueError(f"spinal_linear: activation must be one of {ACTIVATIONS}, got {activation!r}")


def check_args(input: Tensor, weight_x: Sequence[Tensor], weight_h: Sequence[Tensor],
               bias: Sequence[Tensor] | None, out_weight: Tensor, out_bias: Tensor | None,
               splits: int, activation: str) -> tuple[int, int, int]:
    """Validate a functional call; returns (L, W, O): layers, layer width, out features."""
    if not isinstance(input, Tensor) or input.dim() != 2:
        raise ValueError("spinal_linear: input must be a 2-D (B, in_features) tensor, got "
                         f"{tuple(input.shape) if isinstance(input, Tensor) else type(input)}")
    if not input.is_floating_point():
        raise TypeError(f"spinal_linear: input must be a floating-point tensor, got {input.dtype}")
    if isinstance(splits, bool) or not isinstance(splits, int) or not 1 <= splits <= max(input.shape[1], 1):
        raise ValueError(f"spinal_linear: splits must be an int in [1, in_features={input.shape[1]}], "
                         f"got {splits!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"spinal_linear: activation must be one of {ACTIVATIONS}, got {activation!r}")
    L = len(weight_x)
    if L < 1:
        raise ValueError("spinal_linear: weight_x must hold one (W, split) matrix per layer, got none")
    if len(weight_h) != L - 1:
        raise ValueError(f"spinal_linear: weight_h must hold num_layers - 1 = {L - 1} matrices "
                         f"(layer 0 has no W^h), got {len(weight_h)}")
    if bias is not None and len(bias) not in (0, L):
        raise ValueError(f"spinal_linear: bias must hold {L} vectors (or be None/empty), got {len(bias)}")
    if not isinstance(out_weight, Tensor) or out_weight.dim() != 2:
        raise ValueError("spinal_linear: out_weight must be a 2-D (out_features, num_layers * "
                         "layer_width) tensor")
    W = weight_x[0].shape[0] if weight_x[0].dim() == 2 else -1
    sizes = split_sizes(input.shape[1], splits)

    def same(t: Tensor, name: str) -> None:
        if not isinstance(t, Tensor):
            raise TypeError(f"spinal_linear: {name} must be a tensor, got {type(t).__name__}")
        if t.dtype != input.dtype or t.device != input.device:
            raise TypeError(f"spinal_linear: {name} must be {input.dtype} on {input.device} like "
                            f"input, got {t.dtype} on {t.device}")

    for i, w in enumerate(weight_x):
        same(w, f"weight_x[{i}]")
        want = (W, sizes[i % splits])
        if tuple(w.shape) != want:
            raise ValueError(f"spinal_linear: weight_x[{i}] must have shape {want} (layer_width, "
                             f"columns of split {i % splits}), got {tuple(w.shape)}")
    for i, w in enumerate(weight_h):
        same(w, f"weight_h[{i}]")
        if tuple(w.shape) != (W, W):
            raise ValueError(f"spinal_linear: weight_h[{i}] (layer {i + 1}) must have shape "
                             f"{(W, W)}, got {tuple(w.shape)}")
    for i, b in enumerate(bias or ()):
        same(b, f"bias[{i}]")
        if tuple(b.shape) != (W,):
            raise ValueError(f"spinal_linear: bias[{i}] must have shape ({W},), got {tuple(b.shape)}")
    same(out_weight, "out_weight")
    if out_weight.shape[1] != L * W:
        raise ValueError(f"spinal_linear: out_weight must have {L} * {W} = {L * W} columns "
                         f"(num_layers * layer_width), got {tuple(out_weight.shape)}")
    O = out_weight.shape[0]
    if out_bias is not None:
        same(out_bias, "out_bias")
        if tuple(out_bias.shape) != (O,):
            raise ValueError(f"spinal_linear: out_bias must have shape ({O},), got {tuple(out_bias.shape)}")
    return L, W, O



# ---------------------------------------------------------------------------------------------
# the pure-PyTorch reference (fallback, oracle, "eager" baseline)
# ---------------------------------------------------------------------------------------------
def spinal_linear_reference(
    input: Tensor, weight_x: Sequence[Tensor], weight_h: Sequence[Tensor],
    bias: Sequence[Tensor] | None, out_weight: Tensor, out_bias: Tensor | None = None, *,
    splits: int = 2, activation: str = "relu",
    norms: Sequence[Callable[[Tensor], Tensor]] | None = None, dropout: float = 0.0,
    training: bool = False,
) -> Tensor:
    """The SpinalNet head in plain PyTorch ops (differentiable; any device/dtype torch supports).

    input (B, F); weight_x[i] (W, F_{i mod S}); weight_h[i] (W, W) for layer i + 1; bias[i] (W,)
    or None; out_weight (O, L*W); out_bias (O,) or None -> (B, O). ``norms``: one callable per
    layer applied to z_i (the module passes its BatchNorm1d layers); ``dropout``: probability on
    every layer input and the output layer input when ``training``.
    """
    offs = split_offsets(input.shape[1], splits)
    act = _ACT_FN[activation]
    drop = (lambda t: F.dropout(t, dropout, True)) if training and dropout > 0 else (lambda t: t)
    hs: list[Tensor] = []
    for i, wx in enumerate(weight_x):
        s = i % splits
        z = F.linear(drop(input[:, offs[s]:offs[s + 1]]), wx, bias[i] if bias else None)
        if i > 0:
            z = z + F.linear(drop(hs[-1]), weight_h[i - 1])
        if norms is not None:
            z = norms[i](z)
        hs.append(act(z))
    return F.linear(drop(torch.cat(hs, 1)), out_weight, out_bias)


def fold_bn(weight_x: Sequence[Tensor], weight_h: Sequence[Tensor], bias: Sequence[Tensor] | None,
            running_mean: Sequence[Tensor], running_var: Sequence[Tensor],
            bn_weight: Sequence[Tensor | None], bn_bias: Sequence[Tensor | None], eps: float,
            ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Fold inference BatchNorm (z -> (z - mean) / sqrt(var + eps) * gamma + beta) into the layers.

    Returns (weight_x', weight_h', bias') with W' = s W and b' = s (b - mean) + beta, where
    s = gamma / sqrt(var + eps). Exact up to rounding; gradients flow to all inputs.
    """
    wx, wh, bs = [], [], []
    for i in range(len(weight_x)):
        scale = torch.rsqrt(running_var[i] + eps)
        if bn_weight[i] is not None:
            scale = scale * bn_weight[i]
        b = bias[i] if bias else torch.zeros_like(running_mean[i])
        shift = (b - running_mean[i]) * scale
        if bn_bias[i] is not None:
            shift = shift + bn_bias[i]
        wx.append(weight_x[i] * scale[:, None])
        if i > 0:
            wh.append(weight_h[i - 1] * scale[:, None])
        bs.append(shift)
    return wx, wh, bs


def spinal_linear_forward_reference(input, weight_x, weight_h, bias, out_weight, out_bias, splits,
                                    activation) -> tuple[Tensor, Tensor]:
    """(y, H): the output and the hidden buffer [h_0..h_{L-1}] (B, L*W) the backward needs."""
    offs = split_offsets(input.shape[1], splits)
    act = _ACT_FN[activation]
    hs: list[Tensor] = []
    for i, wx in enumerate(weight_x):
        s = i % splits
        z = F.linear(input[:, offs[s]:offs[s + 1]], wx, bias[i] if len(bias) else None)
        if i > 0:
            z = z + F.linear(hs[-1], weight_h[i - 1])
        hs.append(act(z))
    H = torch.cat(hs, 1)
    return F.linear(H, out_weight, out_bias), H


def act_grad_from_out(h: Tensor, activation: str) -> Tensor:
    """act'(z) written with h = act(z)."""
    if activation == "relu":
        return (h > 0).to(h.dtype)
    if activation == "tanh":
        return 1 - h * h
    if activation == "sigmoid":
        return h * (1 - h)
    return torch.ones_like(h)


def spinal_linear_backward_reference(grad_out, input, weight_x, weight_h, hidden, out_weight,
                                     splits, activation):
    """The backward formulas of the module docstring in torch ops (oracle of the kernels)."""
    L, W = len(weight_x), weight_x[0].shape[0]
    offs = split_offsets(input.shape[1], splits)
    gy = grad_out.to(input.dtype)
    gwo, gbo = gy.t() @ hidden, gy.sum(0)
    gH = gy @ out_weight
    gx = torch.zeros_like(input)
    gwx, gwh, gb = [None] * L, [None] * (L - 1), [None] * L
    gz_next = None
    for i in range(L - 1, -1, -1):
        h = hidden[:, i * W:(i + 1) * W]
        g = gH[:, i * W:(i + 1) * W]
        if gz_next is not None:
            g = g + gz_next @ weight_h[i]
        gz = g * act_grad_from_out(h, activation)
        s = i % splits
        xs = input[:, offs[s]:offs[s + 1]]
        gwx[i], gb[i] = gz.t() @ xs, gz.sum(0)
        if i > 0:
            gwh[i - 1] = gz.t() @ hidden[:, (i - 1) * W:i * W]
        gx[:, offs[s]:offs[s + 1]] += gz @ weight_x[i]
        gz_next = gz
    return gx, gwx, gwh, gb, gwo, gbo


def init_bound(fan_in: int) -> float:
    """nn.Linear's default bound 1/sqrt(fan_in) for a layer reading ``fan_in`` features."""
    return 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

ACT_FN = _ACT_FN
