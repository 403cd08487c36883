"""The pure-PyTorch side of shallowkern::quadric_linear (math: ops/quadric_linear.py).

* The packed layout of the full form (``packed_size``, ``triu_indices``, ``pack_symmetric``,
  ``unpack_symmetric``, ``outer_packed``) and the argument checks (``check_args``).
* ``quadric_linear_reference`` / ``quadric_linear_backward_reference``: the forward and the
  backward formulas in aten ops on (B, n) input: the op's fallback kernels (no extension, or
  ``use_backend("reference")``), the test oracle and the benchmark baseline. The full form is
  chunked over rows of the packed triangle, so extra memory stays O(B (n + K)) per chunk.
* ``quadric_linear_composite``: the same function in differentiable aten ops, any leading dims:
  what ``torch.func`` transforms, forward-mode AD and double backward run.
"""

from __future__ import annotations

import torch
from torch import Tensor


FORMS = ("diagonal", "full", "lowrank")


def triu_indices(n: int, device=None) -> tuple[Tensor, Tensor]:
    """(i, j) of the packed order: row-major over i <= j (int64 tensors of length n(n+1)/2)."""
    idx = torch.triu_indices(n, n, device=device)
    return idx[0], idx[1]


def packed_size(n: int) -> int:
    """Number of packed upper-triangle entries of an n x n symmetric matrix: n(n+1)/2."""
    return n * (n + 1) // 2


def pack_symmetric(a: Tensor) -> Tensor:
    """(..., n, n) matrices -> (..., n(n+1)/2) packed coefficients of x^T a x (see module doc)."""
    n = a.shape[-1]
    i, j = triu_indices(n, a.device)
    s = a + a.transpose(-1, -2)
    return torch.where(i == j, a[..., i, j], s[..., i, j])


def unpack_symmetric(p: Tensor, n: int) -> Tensor:
    """(..., n(n+1)/2) packed coefficients -> (..., n, n) symmetric A, x^T A x = sum P x_i x_j."""
    i, j = triu_indices(n, p.device)
    a = p.new_zeros(*p.shape[:-1], n, n)
    half = torch.where(i == j, p, p / 2)
    a[..., i, j] = half
    a[..., j, i] = half
    return a


def outer_packed(x: Tensor) -> Tensor:
    """Z[b, t(i,j)] = x[b,i] * x[b,j] for (B, n) x: (B, n(n+1)/2). Test/reference helper only."""
    i, j = triu_indices(x.shape[-1], x.device)
    return x[:, i] * x[:, j]


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------
def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def check_args(input: Tensor, weight_quad: Tensor, weight: Tensor, bias: Tensor | None,
               form: str, weight_quad2: Tensor | None) -> int:
    """Validate a call (input (*, n)); returns the rank (1 unless form='lowrank')."""
    if form not in FORMS:
        raise ValueError(f"quadric_linear: form must be one of {FORMS}, got {form!r}")
    if not isinstance(input, Tensor) or input.dim() < 1:
        raise ValueError(f"quadric_linear: input must be a tensor of shape (*, in_features), got "
                         f"{_shape(input)}")
    if not input.is_floating_point():
        raise TypeError(f"quadric_linear: input must be a floating-point tensor, got {input.dtype}")
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise ValueError(f"quadric_linear: weight must be a 2-D (out_features, in_features) "
                         f"tensor, got {_shape(weight)}")
    k, n = weight.shape
    if input.shape[-1] != n:
        raise ValueError(f"quadric_linear: input has {input.shape[-1]} features in its last "
                         f"dimension but weight expects in_features={n}")
    named = [("weight_quad", weight_quad), ("weight", weight), ("bias", bias),
             ("weight_quad2", weight_quad2)]
    for name, t in named:
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"quadric_linear: {name} must be a tensor, got {type(t).__name__}")
        if t.dtype != input.dtype:
            raise TypeError(f"quadric_linear: {name} dtype {t.dtype} != input dtype {input.dtype}")
        if t.device != input.device:
            raise ValueError(f"quadric_linear: {name} is on {t.device}, input on {input.device}")
    if bias is not None and tuple(bias.shape) != (k,):
        raise ValueError(f"quadric_linear: bias must have shape ({k},), got {tuple(bias.shape)}")
    rank = 1
    if form == "diagonal":
        want = (k, n)
    elif form == "full":
        want = (k, packed_size(n))
    else:
        if weight_quad2 is None:
            raise ValueError("quadric_linear: form='lowrank' needs weight_quad2 (the second "
                             "factor, shape (rank*out_features, in_features))")
        if (weight_quad.dim() != 2 or k == 0 or weight_quad.shape[0] % k
                or weight_quad.shape[0] == 0):
            raise ValueError(f"quadric_linear: lowrank weight_quad must be (rank*{k}, {n}) with "
                             f"rank >= 1, got {_shape(weight_quad)}")
        rank = weight_quad.shape[0] // k
        want = (rank * k, n)
        if tuple(weight_quad2.shape) != want:
            raise ValueError(f"quadric_linear: weight_quad2 must have shape {want} (same as "
                             f"weight_quad), got {_shape(weight_quad2)}")
    if form != "lowrank" and weight_quad2 is not None:
        raise ValueError(f"quadric_linear: weight_quad2 is only used by form='lowrank', got it "
                         f"with form={form!r}")
    if tuple(weight_quad.shape) != want:
        layout = {"diagonal": "(out_features, in_features)",
                  "full": "(out_features, in_features*(in_features+1)/2) packed upper triangle",
                  "lowrank": "(rank*out_features, in_features)"}[form]
        raise ValueError(f"quadric_linear: form={form!r} needs weight_quad of shape {want} "
                         f"{layout}, got {_shape(weight_quad)}")
    return rank


# ---------------------------------------------------------------------------------------------
# references (aten compositions; 2-D input)
# ---------------------------------------------------------------------------------------------
def quadric_linear_reference(input: Tensor, weight_quad: Tensor, weight_quad2: Tensor | None,
                             weight: Tensor, bias: Tensor | None, form: str) -> Tensor:
    """The forward in aten ops for (B, n) input. The full form is chunked over the packed index
    so that extra memory stays O(B * (n + K)) per chunk of rows of the triangle."""
    y = torch.nn.functional.linear(input, weight, bias)
    if form == "diagonal":
        return y.addmm_(input * input, weight_quad.t())
    if form == "lowrank":
        k = weight.shape[0]
        r = weight_quad.shape[0] // max(k, 1)
        ha = input @ weight_quad.t()
        hb = input @ weight_quad2.t()
        return y.add_((ha * hb).view(-1, r, k).sum(1))
    n = input.shape[1]
    for i0, i1, t0, t1 in _row_chunks(n):
        z = _outer_rows(input, i0, i1)
        y.addmm_(z, weight_quad[:, t0:t1].t())
    return y


def _row_chunks(n: int, target: int = 4096):
    """Split the triangle's rows into chunks of about ``target`` packed entries:
    yields (i0, i1, t0, t1) with packed columns [t0, t1) = rows i0..i1-1."""
    i0, t0 = 0, 0
    while i0 < n:
        i1, t1 = i0, t0
        while i1 < n and (t1 - t0 < target or i1 == i0):
            t1 += n - i1
            i1 += 1
        yield i0, i1, t0, t1
        i0, t0 = i1, t1


def _outer_rows(x: Tensor, i0: int, i1: int) -> Tensor:
    """Z columns of packed rows i0..i1-1: [x_i * x[:, i:] for i in range(i0, i1)] -> (B, sum)."""
    return torch.cat([x[:, i:i + 1] * x[:, i:] for i in range(i0, i1)], dim=1)


def quadric_linear_backward_reference(grad_out: Tensor, input: Tensor, weight_quad: Tensor,
                                      weight_quad2: Tensor | None, weight: Tensor, form: str,
                                      output_mask: list[bool]) -> tuple[Tensor, ...]:
    """Gradients (input, weight_quad, weight_quad2, weight, bias) in aten ops; masked-off or
    unused (weight_quad2 outside lowrank) gradients are empty tensors."""
    gy, x = grad_out, input
    gx = gq = gq2 = gw = gb = None
    if form == "diagonal":
        if output_mask[0]:
            gx = gy @ weight + 2 * x * (gy @ weight_quad)
        if output_mask[1]:
            gq = gy.t() @ (x * x)
    elif form == "lowrank":
        k = weight.shape[0]
        r = weight_quad.shape[0] // max(k, 1)
        ha, hb = x @ weight_quad.t(), x @ weight_quad2.t()
        gyr = gy.repeat(1, r)
        ga, gbq = gyr * hb, gyr * ha
        if output_mask[0]:
            gx = gy @ weight + ga @ weight_quad + gbq @ weight_quad2
        if output_mask[1]:
            gq = ga.t() @ x
            gq2 = gbq.t() @ x
    else:
        n = x.shape[1]
        if output_mask[0]:
            gx = gy @ weight
        if output_mask[1]:
            gq = torch.empty_like(weight_quad)
        for i0, i1, t0, t1 in _row_chunks(n):
            if output_mask[1]:
                torch.mm(gy.t(), _outer_rows(x, i0, i1), out=gq[:, t0:t1])
            if output_mask[0]:
                g = gy @ weight_quad[:, t0:t1]  # (B, chunk)
                off = 0
                for i in range(i0, i1):
                    seg = g[:, off:off + n - i]
                    off += n - i
                    gx[:, i] += (seg * x[:, i:]).sum(1)  # d/dx_i of x_i x_j (j >= i)
                    gx[:, i:] += seg * x[:, i:i + 1]      # d/dx_j of x_i x_j (diag: 2 x_i)
    if output_mask[2]:
        gw = gy.t() @ x
    if output_mask[3]:
        gb = gy.sum(0)
    empty = x.new_empty(0)
    return tuple(t if t is not None else empty.clone() for t in (gx, gq, gq2, gw, gb))



def quadric_linear_composite(input: Tensor, weight_quad: Tensor, weight_quad2: Tensor | None,
                             weight: Tensor, bias: Tensor | None, form: str) -> Tensor:
    """The same function in differentiable aten ops (any leading dims): what function
    transforms and double backward run. The full form goes through the packed outer product
    (B x n(n+1)/2 memory: fine for transforms, not a fast path)."""
    y = torch.nn.functional.linear(input, weight, bias)
    if form == "diagonal":
        return y + torch.nn.functional.linear(input * input, weight_quad)
    if form == "lowrank":
        k = weight.shape[0]
        r = weight_quad.shape[0] // max(k, 1)
        prod = torch.nn.functional.linear(input, weight_quad) * torch.nn.functional.linear(
            input, weight_quad2)
        return y + prod.unflatten(-1, (r, k)).sum(-2)
    i, j = triu_indices(input.shape[-1], input.device)
    return y + torch.nn.functional.linear(input[..., i] * input[..., j], weight_quad)
