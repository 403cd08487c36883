"""QuadricLinear (and, re-exported, QuadricConv2d): quadratic neurons (ops.quadric_linear).

Forms and parameters (n = in_features, K = out_features, T = n(n+1)/2, r = rank):

=========  ==========================================  =====================  ===================
form       y                                           parameters             count
=========  ==========================================  =====================  ===================
diagonal   Wq (x*x) + W x + b          (diro5t)        weight_quad (K, n)     2Kn + K
full       x^T A_k x + W_k x + b_k   (nn.Bilinear)     weight_quad (K, T)     K n(n+1)/2 + Kn + K
lowrank    sum_s (Wa x)(Wb x) + W x + b  (QuadraLib)   weight_quad, weight_   2rKn + Kn + K
                                                       quad2 (r*K, n)
=========  ==========================================  =====================  ===================

``weight`` (K, n) and ``bias`` (K,) are named as in nn.Linear. Initialisation follows the
sources: kaiming-uniform(a=sqrt(5)) for every (K, n)-like weight and U(+-1/sqrt(n)) for the bias
(diro5t's layer, nn.Linear, QuadraLib's linear branches); the full form draws a full A from
nn.Bilinear's U(+-1/sqrt(n)) and packs its symmetric part.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops.quadric_linear import FORMS, init_parameters, packed_size, quadric_linear


def quadric_linear_module_forward(input: Tensor, weight_quad: Tensor, weight: Tensor,
                                  bias: Tensor | None, form: str,
                                  weight_quad2: Tensor | None) -> Tensor:
    """QuadricLinear.forward as one function: fx.symbolic_trace records it as one node."""
    return quadric_linear(input, weight_quad, weight, bias, form=form, weight_quad2=weight_quad2)


torch.fx.wrap("quadric_linear_module_forward")


def quadric_param_count(in_features: int, out_features: int, form: str = "diagonal",
                        rank: int = 1, bias: bool = True) -> int:
    """Parameters of QuadricLinear(in_features, out_features, bias, form=form, rank=rank)."""
    n, k = in_features, out_features
    quad = {"diagonal": k * n, "full": k * packed_size(n), "lowrank": 2 * rank * k * n}[form]
    return quad + k * n + (k if bias else 0)


class QuadricLinear(nn.Module):
    """Quadratic neurons: y = quadratic(x) + W x + b, in the form ``form``.

    Input (*, in_features) -> output (*, out_features). float32/float64 on CPU (C++ kernels;
    float16/bfloat16 via the reference), float32/float16/bfloat16 on CUDA (Triton).
    ``rank`` is required for, and only accepted with, form='lowrank'.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 form: str = "diagonal", rank: int | None = None, device=None, dtype=None):
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"QuadricLinear: form must be one of {FORMS}, got {form!r}")
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"QuadricLinear: {name} must be a positive int, got {v!r}")
        if form == "lowrank":
            if rank is None:
                raise ValueError("QuadricLinear: form='lowrank' needs rank (a positive int)")
            if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
                raise ValueError(f"QuadricLinear: rank must be a positive int, got {rank!r}")
        elif rank is not None:
            raise ValueError(f"QuadricLinear: rank is only used by form='lowrank', got "
                             f"rank={rank!r} with form={form!r}")
        fk = {"device": device, "dtype": dtype}
        self.in_features, self.out_features, self.form = in_features, out_features, form
        self.rank = rank if form == "lowrank" else None
        n, k = in_features, out_features
        quad_shape = {"diagonal": (k, n), "full": (k, packed_size(n)),
                      "lowrank": ((rank or 1) * k, n)}[form]
        self.weight_quad = nn.Parameter(torch.empty(quad_shape, **fk))
        self.weight_quad2 = nn.Parameter(torch.empty(quad_shape, **fk)) if form == "lowrank" else None
        self.weight = nn.Parameter(torch.empty(k, n, **fk))
        self.bias = nn.Parameter(torch.empty(k, **fk)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_parameters(self.weight_quad, self.weight, self.bias, self.form, self.weight_quad2)

    def forward(self, input: Tensor) -> Tensor:
        return quadric_linear_module_forward(input, self.weight_quad, self.weight, self.bias,
                                             self.form, self.weight_quad2)

    def extra_repr(self) -> str:
        s = (f"in_features={self.in_features}, out_features={self.out_features}, "
             f"bias={self.bias is not None}, form={self.form!r}")
        return s + (f", rank={self.rank}" if self.rank is not None else "")


from .quadric_conv2d import QuadricConv2d  # noqa: E402  (re-exported: one import site)
