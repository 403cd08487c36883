"""``MultiDelayLinear``: a linear layer with one weight matrix per delay (issue 14).

The RoDiB model built from it (arrival times, slots, labels) is in shallowkern/nn/rodib.py.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.fx
from torch import Tensor, nn

from ..ops.multi_delay_linear import check_delays, init_parameters, multi_delay_linear


def multi_delay_linear_module_forward(input: Tensor, weight: Tensor, bias: Tensor | None,
                                      delays: tuple[int, ...]) -> Tensor:
    """MultiDelayLinear.forward as one function: fx.symbolic_trace records it as one node."""
    return multi_delay_linear(input, weight, bias, delays)


torch.fx.wrap("multi_delay_linear_module_forward")


class MultiDelayLinear(nn.Module):
    """A linear layer with one weight matrix per delay, over a time series.

    ``y[..., s, :] = bias + sum_m weight[m] @ x[..., s - delays[m], :]`` (zero history), computed
    as one GEMM over all delays (``shallowkern.ops.multi_delay_linear``).

    Args:
        in_features, out_features: n, K.
        delays: M distinct non-negative ints (time steps).
        bias: add a (K,) bias at every output step.
    Shapes: input (*, T, n) -> output (*, T + max(delays), K). Parameters: ``weight`` (M, K, n),
    ``bias`` (K,). dtypes/devices: those of ``multi_delay_linear`` (CPU and CUDA, fp16/bf16/
    fp32/fp64, through the aten composition).
    """

    def __init__(self, in_features: int, out_features: int, delays: Sequence[int],
                 bias: bool = True, device=None, dtype=None):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"MultiDelayLinear: {name} must be an int >= 1, got {v!r}")
        self.delays = check_delays(delays, "MultiDelayLinear")
        self.in_features, self.out_features = in_features, out_features
        kw = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(len(self.delays), out_features, in_features, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw)) if bias else None
        self.reset_parameters()

    @property
    def num_delays(self) -> int:
        return len(self.delays)

    def reset_parameters(self) -> None:
        """nn.Linear's U(+-1/sqrt(in_features)) for each delay matrix and the bias."""
        init_parameters(self.weight, self.bias)

    def forward(self, input: Tensor) -> Tensor:
        return multi_delay_linear_module_forward(input, self.weight, self.bias, self.delays)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"delays={list(self.delays)}, bias={self.bias is not None}")
