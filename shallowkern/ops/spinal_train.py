"""spinal_linear in training with BatchNorm1d batch statistics and/or dropout, as one op.

Math (q = 1 - p; d(t) = m * t / q with m a Bernoulli(q) mask, a fresh one for every use):

    z_i = W_i^x d(x_{i mod S}) + W_i^h d(h_{i-1}) + b_i
    BN (train): xh_i = (z_i - mean_b z_i) / sqrt(var_b z_i + eps)  (biased variance),
                n_i = gamma_i xh_i + beta_i;                 h_i = act(n_i)  (act(z_i) without BN)
    y = W_o d([h_0 .. h_{L-1}]) + b_o

and the running statistics move as nn.BatchNorm1d's: r <- (1 - m) r + m s, with the unbiased
variance B / (B - 1) var_b (m = momentum, or 1 / num_batches_tracked when momentum is None: the
module counts). B = 1 raises nn.BatchNorm1d's ValueError; B = 0 returns an empty output and
leaves the statistics alone (as nn.BatchNorm1d does). The backward formulas are in
csrc/cpu/spinal_linear_train.cpp's header.

Dropout mask: one uint8/bool (B, M) tensor, ``mask_layout`` gives its columns: for layer i
[split i mod S (F_s columns) | h_{i-1} (W columns, i >= 1)], then the output layer's input
(L*W). When not given it is drawn, saved for the backward and returned by the op. The C++ CPU
kernel draws it counter-based: keep = u < round((1 - p) 2^32) for the 32-bit halves u of
splitmix64(seed + j * 0x9E3779B97F4A7C15), j the element-pair index, seed one int64 from torch's
default generator (so ``torch.manual_seed`` reproduces it): ~1 ns an element where ``bernoulli_``
costs ~30 ns on this AMD CPU (ATen's MKL Bernoulli is Intel-only) and dominated the step. CUDA
and the composition use ``bernoulli_``. Every use of an input gets its own mask, as in the eager
composition that calls F.dropout per layer: the distribution (independent Bernoulli(1 - p),
scaled by 1 / (1 - p)) is torch's; the stream of random numbers is not F.dropout's.

Ops (C++ schemas, csrc/registration.cpp): ``shallowkern::spinal_linear_train`` -> (y, batch
mean (L, W), unbiased batch var (L, W), mask), with a C++ autograd kernel;
``spinal_linear_train_forward`` also returns the saved activations (H, XH, rstd) and
``spinal_linear_train_backward`` takes them. CPU fp32/fp64: the C++ kernel (one op call each
way: layer-by-layer GEMMs on the whole batch into one hidden buffer; the statistics between).
CUDA: the Triton kernels (shallowkern/triton/spinal_linear_train.py: L + 1 launches forward,
L + 2 backward), or without Triton the torch formulas below, as the op's CUDA kernels. Without the
extension (or for other dtypes, autocast, function transforms) the functional runs the
composition ``spinal_linear_train_reference``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import flops as _flops
from ._backend import Backend, Choice, OpDispatch, record
from ._common import needs_composite, register_flop_formula
from .spinal_reference import ACT_FN, act_grad_from_out, check_args, split_offsets

TRAIN_SCHEMAS = {
    "spinal_linear_train": (
        "spinal_linear_train(Tensor input, Tensor[] weight_x, Tensor[] weight_h, Tensor[] bias, "
        "Tensor out_weight, Tensor? out_bias, Tensor[] bn_weight, Tensor[] bn_bias, "
        "Tensor? dropout_mask, bool batch_norm, float eps, float dropout, int splits, "
        "str activation, str backend) -> (Tensor out, Tensor batch_mean, Tensor batch_var, "
        "Tensor mask)"),
    "spinal_linear_train_forward": (
        "spinal_linear_train_forward(Tensor input, Tensor[] weight_x, Tensor[] weight_h, "
        "Tensor[] bias, Tensor out_weight, Tensor? out_bias, Tensor[] bn_weight, Tensor[] bn_bias, "
        "Tensor? dropout_mask, bool batch_norm, float eps, float dropout, int splits, "
        "str activation, str backend) -> (Tensor out, Tensor batch_mean, Tensor batch_var, "
        "Tensor hidden, Tensor xhat, Tensor rstd, Tensor mask)"),
    "spinal_linear_train_backward": (
        "spinal_linear_train_backward(Tensor grad_out, Tensor input, Tensor[] weight_x, "
        "Tensor[] weight_h, Tensor out_weight, Tensor[] bn_weight, Tensor hidden, Tensor xhat, "
        "Tensor rstd, Tensor mask, bool batch_norm, float dropout, int splits, str activation, "
        "str backend) -> (Tensor grad_input, Tensor[] grad_weight_x, Tensor[] grad_weight_h, "
        "Tensor[] grad_bias, Tensor grad_out_weight, Tensor grad_out_bias, "
        "Tensor[] grad_bn_weight, Tensor[] grad_bn_bias)"),
}


def _has_kernel(name: str, key: str) -> bool:
    return hasattr(torch.ops.shallowkern, name) and \
        torch._C._dispatch_has_kernel_for_dispatch_key(f"shallowkern::{name}", key)


# True when _C carries the C++ training kernels (csrc/cpu/spinal_linear_train.cpp)
NATIVE_TRAIN = _has_kernel("spinal_linear_train_forward", "CPU") and \
    _has_kernel("spinal_linear_train", "Autograd")


def _train_op_missing(*args) -> str | None:
    return None if NATIVE_TRAIN else "shallowkern._C has no spinal_linear_train kernels"


# Which kernel spinal_linear_train runs (``explain("spinal_linear_train", *op_args)``; honours
# ``use_backend``). "reference" is the composition on CPU and the op's torch-formula kernels on
# CUDA; function transforms and autocast always take the composition.
DISPATCH = OpDispatch("spinal_linear_train", [
    Backend("native", devices=("cpu",), dtypes=(torch.float32, torch.float64),
            supports=_train_op_missing,
            description="C++ training op (batch-statistics BatchNorm / dropout fused)"),
    Backend("triton", devices=("cuda",), needs_triton=True, supports=_train_op_missing,
            description="Triton training kernels (L + 1 launches forward, L + 2 backward)"),
    Backend("reference", description="torch formulas: the composition (CPU), the op's torch "
                                     "kernels (CUDA)"),
], key=lambda input, *rest: input)


def _record(choice: Choice) -> None:
    """Recorded under both names: last_backend("spinal_linear") predates the training op."""
    if not torch.compiler.is_compiling():
        record("spinal_linear", choice)
        record("spinal_linear_train", choice)


def mask_layout(in_features: int, splits: int, num_layers: int, layer_width: int
                ) -> tuple[list[int], int]:
    """(offsets, M): layer i's mask columns start at offsets[i] ([split | h_{i-1}]), the output
    layer's at offsets[num_layers]; M columns in all."""
    offs = split_offsets(in_features, splits)
    starts, c = [], 0
    for i in range(num_layers):
        starts.append(c)
        c += offs[i % splits + 1] - offs[i % splits] + (layer_width if i else 0)
    starts.append(c)
    return starts, c + num_layers * layer_width


def bn_batch_size_error(B: int, W: int) -> ValueError:
    """nn.BatchNorm1d's own error for a training batch of one."""
    return ValueError("Expected more than 1 value per channel when training, got input size "
                      f"torch.Size([{B}, {W}])")


def spinal_linear_train_reference(
    input: Tensor, weight_x: Sequence[Tensor], weight_h: Sequence[Tensor],
    bias: Sequence[Tensor] | None, out_weight: Tensor, out_bias: Tensor | None, *, splits: int,
    activation: str, batch_norm: bool, bn_weight: Sequence[Tensor] | None = None,
    bn_bias: Sequence[Tensor] | None = None, running_mean: Sequence[Tensor] | None = None,
    running_var: Sequence[Tensor] | None = None, momentum: float = 0.1, eps: float = 1e-5,
    dropout: float = 0.0, dropout_mask: Tensor | None = None,
) -> Tensor:
    """The training head as a torch composition (F.batch_norm updates the running statistics)."""
    B, L, W = input.shape[0], len(weight_x), weight_x[0].shape[0]
    offs = split_offsets(input.shape[1], splits)
    starts, M = mask_layout(input.shape[1], splits, L, W)
    q = 1.0 - dropout
    if dropout > 0 and dropout_mask is None:
        dropout_mask = torch.empty(B, M, dtype=torch.uint8, device=input.device).bernoulli_(q)

    def drop(t: Tensor, c0: int) -> Tensor:
        if dropout == 0:
            return t
        return t * (dropout_mask[:, c0:c0 + t.shape[1]].to(t.dtype) / q)

    hs: list[Tensor] = []
    for i, wx in enumerate(weight_x):
        s = i % splits
        xs = input[:, offs[s]:offs[s + 1]]
        z = F.linear(drop(xs, starts[i]), wx, bias[i] if bias else None)
        if i > 0:
            z = z + F.linear(drop(hs[-1], starts[i] + xs.shape[1]), weight_h[i - 1])
        if batch_norm:
            z = F.batch_norm(z, running_mean[i] if running_mean else None,
                             running_var[i] if running_var else None,
                             bn_weight[i] if bn_weight else None, bn_bias[i] if bn_bias else None,
                             True, momentum, eps)
        hs.append(ACT_FN[activation](z))
    return F.linear(drop(torch.cat(hs, 1), starts[L]), out_weight, out_bias)


# ---------------------------------------------------------------------------------------------
# the op's kernels on devices without a native one: the formulas in torch ops
# ---------------------------------------------------------------------------------------------
def train_forward_torch(input, weight_x, weight_h, bias, out_weight, out_bias, bn_weight, bn_bias,
                        dropout_mask, batch_norm, eps, dropout, splits, activation, backend):
    """(y, mean, unbiased var, H, XH, rstd, mask) as the C++ kernel returns them."""
    B, L, W = input.shape[0], len(weight_x), weight_x[0].shape[0]
    offs = split_offsets(input.shape[1], splits)
    starts, M = mask_layout(input.shape[1], splits, L, W)
    q = 1.0 - dropout
    mask = input.new_empty(0, dtype=torch.uint8)
    if dropout > 0:
        mask = dropout_mask.to(torch.uint8, copy=True) if dropout_mask is not None else \
            torch.empty(B, M, dtype=torch.uint8, device=input.device).bernoulli_(q)
    drop = (lambda t, c0: t * (mask[:, c0:c0 + t.shape[1]].to(t.dtype) / q)) if dropout > 0 \
        else (lambda t, c0: t)
    hs, xhs, means, uvars, rstds = [], [], [], [], []
    for i, wx in enumerate(weight_x):
        s = i % splits
        xs = input[:, offs[s]:offs[s + 1]]
        z = F.linear(drop(xs, starts[i]), wx, bias[i] if len(bias) else None)
        if i > 0:
            z = z + F.linear(drop(hs[-1], starts[i] + xs.shape[1]), weight_h[i - 1])
        if batch_norm:
            mu = z.mean(0) if B else z.new_zeros(W)
            var = z.var(0, unbiased=False) if B else z.new_ones(W)
            rstd = torch.rsqrt(var + eps)
            xh = (z - mu) * rstd
            z = xh * bn_weight[i] + bn_bias[i] if len(bn_weight) else xh
            xhs.append(xh)
            means.append(mu)
            uvars.append(var * B / (B - 1) if B > 1 else z.new_ones(W))
            rstds.append(rstd)
        hs.append(ACT_FN[activation](z))
    H = torch.cat(hs, 1)
    y = F.linear(drop(H, starts[L]), out_weight, out_bias)
    e = input.new_empty(0)
    st = (lambda ts: torch.stack(ts)) if batch_norm else (lambda ts: input.new_empty(0, W))
    return (y, st(means), st(uvars), H, torch.cat(xhs, 1) if batch_norm else e, st(rstds), mask)


def train_backward_torch(grad_out, input, weight_x, weight_h, out_weight, bn_weight, hidden, xhat,
                         rstd, mask, batch_norm, dropout, splits, activation, backend):
    """The backward formulas (csrc/cpu/spinal_linear_train.cpp) in torch ops."""
    B, L, W = input.shape[0], len(weight_x), weight_x[0].shape[0]
    offs = split_offsets(input.shape[1], splits)
    starts, _ = mask_layout(input.shape[1], splits, L, W)
    q = 1.0 - dropout
    drop = (lambda t, c0: t * (mask[:, c0:c0 + t.shape[1]].to(t.dtype) / q)) if dropout > 0 \
        else (lambda t, c0: t)
    gy = grad_out.to(input.dtype)
    gwo, gbo = gy.t() @ drop(hidden, starts[L]), gy.sum(0)
    gH = drop(gy @ out_weight, starts[L])
    gx = torch.zeros_like(input)
    gwx, gwh, gb, ggam, gbet = [None] * L, [None] * (L - 1), [None] * L, [], []
    gz_next = None
    for i in range(L - 1, -1, -1):
        s = i % splits
        k = offs[s + 1] - offs[s]
        g = gH[:, i * W:(i + 1) * W]
        if gz_next is not None:
            k1 = offs[(i + 1) % splits + 1] - offs[(i + 1) % splits]
            g = g + drop(gz_next @ weight_h[i], starts[i + 1] + k1)
        gn = g * act_grad_from_out(hidden[:, i * W:(i + 1) * W], activation)
        if batch_norm:
            xh, rs = xhat[:, i * W:(i + 1) * W], rstd[i]
            s1, s2 = gn.sum(0), (gn * xh).sum(0)
            gam = bn_weight[i] if len(bn_weight) else 1.0
            if len(bn_weight):
                ggam.insert(0, s2)
                gbet.insert(0, s1)
            gz = gam * rs * (gn - s1 / B - xh * s2 / B)
        else:
            gz = gn
        xs = input[:, offs[s]:offs[s + 1]]
        gwx[i], gb[i] = gz.t() @ drop(xs, starts[i]), gz.sum(0)
        if i > 0:
            gwh[i - 1] = gz.t() @ drop(hidden[:, (i - 1) * W:i * W], starts[i] + k)
        gx[:, offs[s]:offs[s + 1]] += drop(gz @ weight_x[i], starts[i])
        gz_next = gz
    return gx, gwx, gwh, gb, gwo, gbo, ggam, gbet


def _cuda_train_forward(*args):
    if args[-1] == "triton":
        from ..triton import spinal_linear_train as tk
        return tk.train_forward(*args)
    return train_forward_torch(*args)


def _cuda_train_backward(*args):
    if args[-1] == "triton":
        from ..triton import spinal_linear_train as tk
        return tk.train_backward(*args)
    return train_backward_torch(*args)


for _name, _fn in (("spinal_linear_train_forward", _cuda_train_forward),
                   ("spinal_linear_train_backward", _cuda_train_backward)):
    if hasattr(torch.ops.shallowkern, _name):
        torch.library.register_kernel(f"shallowkern::{_name}", "cuda", _fn)


# ---------------------------------------------------------------------------------------------
# functional
# ---------------------------------------------------------------------------------------------
def spinal_linear_train(
    input: Tensor, weight_x: Sequence[Tensor], weight_h: Sequence[Tensor],
    bias: Sequence[Tensor] | None, out_weight: Tensor, out_bias: Tensor | None = None, *,
    splits: int = 2, activation: str = "relu", batch_norm: bool = False,
    bn_weight: Sequence[Tensor] | None = None, bn_bias: Sequence[Tensor] | None = None,
    running_mean: Sequence[Tensor] | None = None, running_var: Sequence[Tensor] | None = None,
    momentum: float = 0.1, eps: float = 1e-5, dropout: float = 0.0,
    dropout_mask: Tensor | None = None,
) -> Tensor:
    """The SpinalNet head in training mode, BatchNorm on batch statistics and dropout fused.

    Shapes as ``spinal_linear`` (input (B, F) -> (B, O)), plus per layer: bn_weight / bn_bias
    (W,) each (affine BatchNorm) or None; running_mean / running_var (W,) each, updated in place
    with ``momentum`` (the factor itself: the caller turns momentum=None into
    1 / num_batches_tracked, as nn.BatchNorm1d does) or None (no running statistics);
    dropout_mask (B, M) uint8/bool (``mask_layout``) or None (drawn). dropout in [0, 1).
    Support: CPU fp32/fp64 run the C++ kernel; CUDA fp32/fp16/bf16 the Triton kernels; other
    dtypes, autocast and function transforms the composition. Differentiable in input, weights,
    biases and bn_weight / bn_bias.
    """
    L, W = len(weight_x), weight_x[0].shape[0] if len(weight_x) else 0
    if not (isinstance(dropout, (int, float)) and 0.0 <= float(dropout) < 1.0):
        raise ValueError(f"spinal_linear_train: dropout must be a probability in [0, 1), got {dropout!r}")
    if batch_norm:
        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
            raise ValueError(f"spinal_linear_train: eps must be a finite number > 0, got {eps!r}")
        if not (isinstance(momentum, (int, float)) and math.isfinite(momentum)):
            raise ValueError(f"spinal_linear_train: momentum must be a finite number, got {momentum!r}")
        for name, ts in (("bn_weight", bn_weight), ("bn_bias", bn_bias),
                         ("running_mean", running_mean), ("running_var", running_var)):
            if ts is not None and len(ts) != L:
                raise ValueError(f"spinal_linear_train: {name} must hold num_layers = {L} vectors "
                                 f"or be None, got {len(ts)}")
        if (running_mean is None) != (running_var is None):
            raise ValueError("spinal_linear_train: running_mean and running_var go together")
        if (bn_weight is None) != (bn_bias is None):
            raise ValueError("spinal_linear_train: bn_weight and bn_bias go together (affine)")
        if isinstance(input, Tensor) and input.dim() == 2 and input.shape[0] == 1:
            raise bn_batch_size_error(1, W)
    b = list(bias) if bias else []
    gam = list(bn_weight) if batch_norm and bn_weight is not None else []
    bet = list(bn_bias) if batch_norm and bn_bias is not None else []
    composite = (not isinstance(input, Tensor) or torch.is_autocast_enabled(input.device.type)
                 or needs_composite(input, *weight_x, out_weight))
    choice = None if composite else DISPATCH.choose(input)
    if composite or (choice.backend == "reference" and not (input.is_cuda and NATIVE_TRAIN)):
        _record(choice or Choice("reference", "training composition (autocast or a function "
                                              "transform)"))
        if isinstance(input, Tensor) and torch.is_autocast_enabled(input.device.type):
            # the linear operands in the region's dtype, as aten's linear (BatchNorm keeps its
            # parameters: batch_norm takes a low-precision input with fp32 weights)
            dt = torch.get_autocast_dtype(input.device.type)
            c = lambda t: t.to(dt) if t is not None and t.is_floating_point() else t
            input, weight_x, weight_h = c(input), [c(w) for w in weight_x], [c(w) for w in weight_h]
            b, out_weight, out_bias = [c(t) for t in b], c(out_weight), c(out_bias)
        check_args(input, weight_x, weight_h, b, out_weight, out_bias, splits, activation)
        return spinal_linear_train_reference(
            input, weight_x, weight_h, b, out_weight, out_bias, splits=splits,
            activation=activation, batch_norm=batch_norm, bn_weight=gam or None,
            bn_bias=bet or None, running_mean=running_mean, running_var=running_var,
            momentum=momentum, eps=eps, dropout=float(dropout), dropout_mask=dropout_mask)
    backend = choice.backend
    _record(choice)
    try:
        y, mean, uvar, _ = torch.ops.shallowkern.spinal_linear_train(
            input, weight_x, weight_h, b, out_weight, out_bias, gam, bet, dropout_mask,
            bool(batch_norm), float(eps), float(dropout), splits, activation, backend)
    except (RuntimeError, TypeError, IndexError):
        check_args(input, weight_x, weight_h, b, out_weight, out_bias, splits, activation)
        raise
    if batch_norm and running_mean is not None and input.shape[0] > 0:
        with torch.no_grad():
            dt = running_mean[0].dtype
            torch._foreach_lerp_(list(running_mean), list(mean.to(dt).unbind(0)), float(momentum))
            torch._foreach_lerp_(list(running_var), list(uvar.to(dt).unbind(0)), float(momentum))
    return y


def batchnorm_train_kwargs(norms, batch: int) -> dict | None:
    """``spinal_linear_train`` keyword arguments for a list of nn.BatchNorm1d in training mode,
    doing nn.BatchNorm1d's bookkeeping first (num_batches_tracked += 1; momentum None -> the
    cumulative factor 1 / num_batches_tracked). None when the layers disagree on eps, momentum,
    affine or track_running_stats (the caller then runs the composition, layer by layer)."""
    n0 = norms[0]
    if any((n.eps, n.momentum, n.affine, n.track_running_stats) !=
           (n0.eps, n0.momentum, n0.affine, n0.track_running_stats) for n in norms):
        return None
    if batch == 1:  # nn.BatchNorm1d's error, before any state moves
        raise bn_batch_size_error(1, n0.num_features)
    momentum = 0.0 if n0.momentum is None else n0.momentum
    running = n0.track_running_stats and n0.running_mean is not None
    if running and n0.num_batches_tracked is not None:
        torch._foreach_add_([n.num_batches_tracked for n in norms], 1)
        if n0.momentum is None:
            momentum = 1.0 / float(n0.num_batches_tracked)
    return dict(batch_norm=True, eps=n0.eps, momentum=momentum,
                bn_weight=[n.weight for n in norms] if n0.affine else None,
                bn_bias=[n.bias for n in norms] if n0.affine else None,
                running_mean=[n.running_mean for n in norms] if running else None,
                running_var=[n.running_var for n in norms] if running else None)


# ---------------------------------------------------------------------------------------------
# FLOP formulas (GEMMs only, as torch's counter: BatchNorm, dropout, activation are not counted)
# ---------------------------------------------------------------------------------------------
def _train_flops(input_shape, weight_x, weight_h, bias, out_weight, out_bias, bn_weight, bn_bias,
                 dropout_mask, batch_norm, eps, dropout, splits, *a, **kw) -> int:
    return _flops.spinal_linear_flops(input_shape[0], input_shape[1], weight_x[0][0],
                                      len(weight_x), splits, out_weight[0])


def _train_backward_flops(grad_shape, input_shape, weight_x, weight_h, out_weight, bn_weight,
                          hidden, xhat, rstd, mask, batch_norm, dropout, splits, *a, **kw) -> int:
    return _flops.spinal_linear_backward_flops(input_shape[0], input_shape[1], weight_x[0][0],
                                               len(weight_x), splits, out_weight[0])


if NATIVE_TRAIN or hasattr(torch.ops.shallowkern, "spinal_linear_train_forward"):
    # deferred until torch.utils.flop_counter is imported (it imports Triton)
    for _name in ("spinal_linear_train", "spinal_linear_train_forward"):
        if hasattr(torch.ops.shallowkern, _name):
            register_flop_formula(getattr(torch.ops.shallowkern, _name))(_train_flops)
    if hasattr(torch.ops.shallowkern, "spinal_linear_train_backward"):
        register_flop_formula(torch.ops.shallowkern.spinal_linear_train_backward)(
            _train_backward_flops)
