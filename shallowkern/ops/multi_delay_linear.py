"""multi_delay_linear: a linear layer with M delayed copies of its connections (RoDiB, issue 14).

Math (x: (B, T, n) time series, M delays tau_0..tau_{M-1}: distinct non-negative ints,
W: (M, K, n), b: (K,) or None, T_out = T + max(tau)):

    y[b, s, :] = b + sum_m  W^(m) x[b, s - tau_m, :]      (terms with s - tau_m outside [0, T)
                                                           are zero: causal, zero history)

i.e. a causal 1-D convolution over time whose kernel of length max(tau)+1 has only M non-zero
taps. The output runs to T + max(tau) - 1 so that every input step reaches every delay (a
"full" convolution: nothing is cut off). The bias is added at every output step.

How it is computed (one GEMM over the delays, no Python loop over M):

    Y = x.reshape(B*T, n) @ W.reshape(M*K, n)^T          -> (B, T, M, K)      one GEMM
    y = bias.expand(B, T_out, K).index_add(1, t + tau_m, Y.view(B, T*M, K))   one scatter-add

(the (T, M) index t + tau_m names the output step each product lands on). On CPU index_add
runs its T*M row additions serially (deterministic); on CUDA it uses atomic adds, so the sum
order of coinciding delays may vary between runs, as for aten's own index_add. Measured on the
2-core VM (1 thread), the scatter-add beat both a gather-and-sum over a zero-padded Y (2.5-3.6x:
the gather moves T_out*M rows, mostly zeros when T is small) and the per-delay loop (1.1-1.4x).

Backward (gy = dL/dy, (B, T_out, K)):

    G[b, t, m, :] = gy[b, t + tau_m, :]                   one gather -> (B*T, M*K)
    gx = G @ W.reshape(M*K, n)                            one GEMM
    gW = G^T @ x.reshape(B*T, n)                          one GEMM   -> (M, K, n)
    gb = gy.sum((0, 1))

Layers (CONVENTIONS.md §2, docs/adding_an_op.md): ``multi_delay_linear_reference`` (the batched
aten composition above) is the CPU/CUDA fallback and the benchmark baseline; the test oracle is
an explicit per-time-step loop in tests/specs/multi_delay_linear.py. ``shallowkern::
multi_delay_linear`` and ``multi_delay_linear_backward`` are custom ops with fakes, autograd
(double backward through the composite), autocast and FLOP formulas (shallowkern.flops). Only the
"reference" backend exists: no native or Triton kernel is written for this op (the two GEMMs
dominate and already run on MKL/cuBLAS; the scatter/gather are memory-bound copies).

The module is shallowkern/nn/multi_delay_linear.py; the RoDiB model built from it (arrival
times, slots, labels) is in shallowkern/nn/rodib.py and docs/rodib.md.
"""

from __future__ import annotations

import math
import operator
from typing import Sequence

import torch
from torch import Tensor
from ._common import register_flop_formula  # deferred: flop_counter imports Triton

from .. import flops as _flops
from ._backend import Backend, OpDispatch
from ._common import autocast_dtype, cast_for_autocast, needs_composite, register_autocast

#: the largest delay accepted: a bigger one makes a (B, T + max_delay, K) output of mostly bias.
MAX_DELAY = 1 << 20


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------
def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def check_delays(delays, where: str = "multi_delay_linear") -> tuple[int, ...]:
    """Validate ``delays`` (a sequence of M >= 1 distinct non-negative ints); returns a tuple.

    bools, floats (even 2.0) and tensors are rejected: a delay is a count of time steps."""
    if isinstance(delays, (str, bytes)) or not isinstance(delays, Sequence):
        raise TypeError(f"{where}: delays must be a sequence of ints, got "
                        f"{type(delays).__name__}")
    if len(delays) < 1:
        raise ValueError(f"{where}: delays must hold at least one delay (M >= 1), got []")
    out = []
    for i, d in enumerate(delays):
        if isinstance(d, bool) or isinstance(d, float) or isinstance(d, Tensor):
            raise TypeError(f"{where}: delays[{i}] must be an int, got {d!r} "
                            f"({type(d).__name__})")
        try:
            v = operator.index(d)
        except TypeError:
            raise TypeError(f"{where}: delays[{i}] must be an int, got {d!r} "
                            f"({type(d).__name__})") from None
        if v < 0:
            raise ValueError(f"{where}: delays must be non-negative (causal), delays[{i}] = {v}")
        if v > MAX_DELAY:
            raise ValueError(f"{where}: delays[{i}] = {v} exceeds MAX_DELAY = {MAX_DELAY}")
        out.append(v)
    if len(set(out)) != len(out):
        dup = sorted({v for v in out if out.count(v) > 1})
        raise ValueError(f"{where}: delays must be distinct, got {list(out)} (repeated: {dup})")
    return tuple(out)


def check_args(input: Tensor, weight: Tensor, bias: Tensor | None, delays) -> tuple[int, ...]:
    """Validate a call (input (*, T, n), weight (M, K, n)); returns the delays as a tuple."""
    if not isinstance(input, Tensor) or input.dim() < 2:
        raise ValueError(f"multi_delay_linear: input must be a tensor of shape (*, T, "
                         f"in_features) (time second to last), got {_shape(input)}")
    if not input.is_floating_point():
        raise TypeError(f"multi_delay_linear: input must be a floating-point tensor, got "
                        f"{input.dtype}")
    if not isinstance(weight, Tensor) or weight.dim() != 3:
        raise ValueError(f"multi_delay_linear: weight must be a 3-D (M, out_features, "
                         f"in_features) tensor (one matrix per delay), got {_shape(weight)}")
    taus = check_delays(delays)
    m, k, n = weight.shape
    if m != len(taus):
        raise ValueError(f"multi_delay_linear: weight holds {m} delay matrices but delays has "
                         f"{len(taus)} entries; weight.shape[0] must equal len(delays)")
    if input.shape[-1] != n:
        raise ValueError(f"multi_delay_linear: input has {input.shape[-1]} features in its last "
                         f"dimension but weight expects in_features={n}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"multi_delay_linear: {name} must be a tensor, got "
                            f"{type(t).__name__}")
        if t.dtype != input.dtype:
            raise TypeError(f"multi_delay_linear: {name} dtype {t.dtype} != input dtype "
                            f"{input.dtype}")
        if t.device != input.device:
            raise ValueError(f"multi_delay_linear: {name} is on {t.device}, input on "
                             f"{input.device}")
    if bias is not None and tuple(bias.shape) != (k,):
        raise ValueError(f"multi_delay_linear: bias must have shape ({k},), got "
                         f"{tuple(bias.shape)}")
    return taus


def output_steps(steps: int, delays: Sequence[int]) -> int:
    """T_out = T + max(delays): the output's time length for a T-step input."""
    return steps + max(delays)


# ---------------------------------------------------------------------------------------------
# references (aten compositions; 3-D input)
# ---------------------------------------------------------------------------------------------
def _backward_index(steps: int, delays: Sequence[int], device) -> Tensor:
    """(T, M) int64: the output step t + tau_m that Y[t, m] is added to (forward scatter,
    backward gather)."""
    t = torch.arange(steps, device=device).unsqueeze(1)
    return t + torch.tensor(list(delays), device=device, dtype=torch.long)


def multi_delay_linear_reference(input: Tensor, weight: Tensor, bias: Tensor | None,
                                 delays: Sequence[int]) -> Tensor:
    """The forward for (B, T, n) input -> (B, T + max(delays), K): one GEMM over all delays,
    one scatter-add over time (see the module docstring)."""
    b, steps, n = input.shape
    m, k, _ = weight.shape
    y = torch.mm(input.reshape(b * steps, n), weight.reshape(m * k, n).t())
    shape = (b, output_steps(steps, delays), k)
    base = input.new_zeros(shape) if bias is None else bias.expand(shape)
    idx = _backward_index(steps, delays, input.device).reshape(-1)       # (T*M,) t + tau_m
    return base.index_add(1, idx, y.view(b, steps * m, k))


def multi_delay_linear_backward_reference(grad_out: Tensor, input: Tensor, weight: Tensor,
                                          delays: Sequence[int], output_mask: Sequence[bool]
                                          ) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (input, weight, bias) in aten ops; masked-off gradients are empty tensors."""
    b, steps, n = input.shape
    m, k, _ = weight.shape
    empty = input.new_empty(0)
    gx = gw = gb = None
    if output_mask[0] or output_mask[1]:
        idx = _backward_index(steps, delays, input.device)               # (T, M)
        g = grad_out.index_select(1, idx.reshape(-1)).reshape(b * steps, m * k)
        if output_mask[0]:
            gx = torch.mm(g, weight.reshape(m * k, n)).view(b, steps, n)
        if output_mask[1]:
            gw = torch.mm(g.t(), input.reshape(b * steps, n)).view(m, k, n)
    if output_mask[2]:
        gb = grad_out.sum((0, 1))
    return tuple(t if t is not None else empty.clone() for t in (gx, gw, gb))


def multi_delay_linear_composite(input: Tensor, weight: Tensor, bias: Tensor | None,
                                 delays: Sequence[int]) -> Tensor:
    """The same function in differentiable aten ops for (*, T, n) input (what function
    transforms and double backward run)."""
    lead = input.shape[:-2]
    x = input.reshape(math.prod(lead), *input.shape[-2:])
    y = multi_delay_linear_reference(x, weight, bias, delays)
    return y.view(*lead, *y.shape[-2:])


def multi_delay_linear_loop(input: Tensor, weight: Tensor, bias: Tensor | None,
                            delays: Sequence[int]) -> Tensor:
    """The per-delay loop users write first (M GEMMs, M shifted adds): the benchmark baseline
    the batched form is measured against. (*, T, n) -> (*, T + max(delays), K)."""
    steps = input.shape[-2]
    out = input.new_zeros(*input.shape[:-2], output_steps(steps, delays), weight.shape[1])
    for m, tau in enumerate(delays):
        out[..., tau:tau + steps, :] += torch.nn.functional.linear(input, weight[m])
    return out if bias is None else out + bias


# ---------------------------------------------------------------------------------------------
# backend choice and registered ops
# ---------------------------------------------------------------------------------------------
FORWARD = OpDispatch("multi_delay_linear", [
    Backend("reference", description="aten composition: one GEMM over all delays + one "
            "scatter-add over time"),
])
BACKWARD = OpDispatch("multi_delay_linear_backward", [
    Backend("reference", description="aten composition: one gather + two GEMMs"),
], key=lambda grad_out, input, *rest: input)


def _check_op_args(input, weight, bias, delays) -> tuple[int, ...]:
    taus = check_args(input, weight, bias, delays)
    if input.dim() != 3:
        raise ValueError(f"multi_delay_linear: the registered op takes a 3-D (B, T, "
                         f"in_features) input, got {tuple(input.shape)} (the functional "
                         f"flattens leading dimensions)")
    return taus


@torch.library.custom_op("shallowkern::multi_delay_linear", mutates_args=())
def multi_delay_linear_op(input: Tensor, weight: Tensor, bias: Tensor | None,
                          delays: list[int]) -> Tensor:
    """(B, T, n) -> (B, T + max(delays), K); the kernel is chosen by ``FORWARD``."""
    taus = _check_op_args(input, weight, bias, delays)
    FORWARD.select(input, weight, bias, taus)
    return multi_delay_linear_reference(input.contiguous(), weight.contiguous(), bias, taus)


@multi_delay_linear_op.register_fake
def _multi_delay_linear_fake(input, weight, bias, delays):
    taus = _check_op_args(input, weight, bias, delays)
    return input.new_empty(input.shape[0], output_steps(input.shape[1], taus), weight.shape[1])


@torch.library.custom_op("shallowkern::multi_delay_linear_backward", mutates_args=())
def multi_delay_linear_backward_op(grad_out: Tensor, input: Tensor, weight: Tensor,
                                   delays: list[int], output_mask: list[bool], backend: str = ""
                                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients w.r.t. (input, weight, bias); ``output_mask``: 3 flags, off ones come back
    empty. ``backend``: the forward's choice (autograd passes it), honoured where eligible."""
    taus = _check_op_args(input, weight, None, delays)
    want = (input.shape[0], output_steps(input.shape[1], taus), weight.shape[1])
    if tuple(grad_out.shape) != want or grad_out.dtype != input.dtype:
        raise ValueError(f"multi_delay_linear_backward: grad_out must be {input.dtype} of shape "
                         f"{want}, got {grad_out.dtype} {tuple(grad_out.shape)}")
    if len(output_mask) != 3:
        raise ValueError(f"multi_delay_linear_backward: output_mask needs 3 flags, got "
                         f"{output_mask}")
    BACKWARD.select(grad_out, input, weight, taus, backend=backend or None)
    return multi_delay_linear_backward_reference(grad_out.contiguous(), input.contiguous(),
                                                 weight.contiguous(), taus, output_mask)


@multi_delay_linear_backward_op.register_fake
def _multi_delay_linear_backward_fake(grad_out, input, weight, delays, output_mask, backend=""):
    e = lambda: input.new_empty(0)  # noqa: E731
    return (input.new_empty(input.shape) if output_mask[0] else e(),
            weight.new_empty(weight.shape) if output_mask[1] else e(),
            weight.new_empty(weight.shape[1]) if output_mask[2] else e())


def _setup_context(ctx, inputs, output):
    input, weight, bias, delays = inputs
    ctx.save_for_backward(input, weight, bias)
    ctx.delays, ctx.has_bias = list(delays), bias is not None
    # the forward's choice, carried to the backward (autograd may run it on another thread)
    ctx.backend = FORWARD.choose(input, weight, bias, delays).backend


def _backward(ctx, grad_out):
    input, weight, bias = ctx.saved_tensors
    ng = ctx.needs_input_grad
    if torch.is_grad_enabled():
        # create_graph=True (double backward): the composite, differentiable again
        leaves = (input, weight, bias)
        with torch.enable_grad():
            y = multi_delay_linear_composite(*leaves, ctx.delays)
        want = [i for i in range(3) if ng[i] and leaves[i] is not None]
        grads = torch.autograd.grad(y, [leaves[i] for i in want], grad_out, create_graph=True)
        out = [None] * 3
        for i, g in zip(want, grads):
            out[i] = g
        return (*out, None)
    mask = [ng[0], ng[1], ctx.has_bias and ng[2]]
    gx, gw, gb = multi_delay_linear_backward_op(grad_out.contiguous(), input, weight, ctx.delays,
                                                mask, ctx.backend)
    return (gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None, None)


multi_delay_linear_op.register_autograd(_backward, setup_context=_setup_context)
register_autocast("shallowkern::multi_delay_linear")


@register_flop_formula(torch.ops.shallowkern.multi_delay_linear)
def _multi_delay_linear_flops(input_shape, weight_shape, bias_shape, delays, out_shape=None,
                              **kwargs) -> int:
    m, k, n = weight_shape
    return _flops.multi_delay_linear_flops(input_shape[0], input_shape[1], n, k, m)


@register_flop_formula(torch.ops.shallowkern.multi_delay_linear_backward)
def _multi_delay_linear_backward_flops(grad_shape, input_shape, weight_shape, delays, output_mask,
                                       *args, out_shape=None, **kwargs) -> int:
    m, k, n = weight_shape
    return _flops.multi_delay_linear_backward_flops(input_shape[0], input_shape[1], n, k, m,
                                                    output_mask)


# ---------------------------------------------------------------------------------------------
# functional
# ---------------------------------------------------------------------------------------------
def multi_delay_linear(input: Tensor, weight: Tensor, bias: Tensor | None = None,
                       delays: Sequence[int] = (0,)) -> Tensor:
    """Multi-delay linear layer: ``y[..., s, :] = bias + sum_m W[m] x[..., s - delays[m], :]``.

    Args:
        input: (*, T, n) time series (time second to last, T >= 0 steps), floating point; any
            strides. CPU and CUDA, float16/bfloat16/float32/float64 (aten composition).
        weight: (M, K, n), one (K, n) matrix per delay, same dtype and device as input.
        bias: (K,) or None, added at every output step.
        delays: M distinct non-negative ints (time steps), in the order of weight's first dim.
    Returns:
        (*, T + max(delays), K) in the input's dtype. Under ``torch.autocast`` the inputs are
        cast to the region's dtype first; under ``torch.func`` transforms and forward-mode AD
        the composition runs (exact derivatives).
    """
    if isinstance(input, Tensor) and autocast_dtype(input.device.type) is not None:
        input, weight, bias = cast_for_autocast(input.device.type, input, weight, bias)
    taus = check_args(input, weight, bias, delays)
    if needs_composite(input, weight, bias):
        return multi_delay_linear_composite(input, weight, bias, taus)
    lead = input.shape[:-2]
    x = input.reshape(math.prod(lead), *input.shape[-2:])
    y = multi_delay_linear_op(x, weight, bias, list(taus))
    return y.view(*lead, *y.shape[-2:])


def init_parameters(weight: Tensor, bias: Tensor | None) -> None:
    """nn.Linear's initialisation per delay matrix (U(+-1/sqrt(n)) for weight and bias), in
    place. The output's variance then grows with the number of delays that land on one step
    (at most M); RoDiBHead relies on that being <= 1 per step for a static input (see its doc)."""
    n = weight.shape[-1]
    bound = 1 / math.sqrt(n) if n > 0 else 0.0
    with torch.no_grad():
        weight.uniform_(-bound, bound)
        if bias is not None:
            bias.uniform_(-bound, bound)
