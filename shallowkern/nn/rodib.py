"""RoDiB (issue 14): ``RoDiBHead`` (the layer itself, ``MultiDelayLinear``, is in
shallowkern/nn/multi_delay_linear.py; arrival times and delay sets in nn/rodib_delays.py).

Interpretation of "Role of delay in brain dynamics" (Meir et al., Physica A 654, 130166, 2024;
from its abstract only — docs/rodib.md states every choice and why):

* A delayed stage l holds M matrices W_l^(m) and one bias: h_{l+1}(t) = phi(b_l + sum_m
  W_l^(m) h_l(t - tau_m)), with the same M delays tau_m (distinct non-negative ints) on every
  stage, zero history (h_l(t) = 0 for t < 0), phi = ReLU between stages and none on the last.
* The backbone's features are presented once, as an impulse: h_0(0) = x, h_0(t) = 0 for t != 0.
* With L stages the single output unit carries input-dependent values exactly at the arrival
  times {tau_{m_1} + ... + tau_{m_L}} (one delay per stage; ``arrival_times``): at most
  C(M+L-1, L) distinct ones, all of them when the delays are a B_L set (all L-sums distinct,
  ``draw_delays``). Elsewhere it holds only bias-driven constants.
* Label j is read at slot time t_j (the j-th earliest arrival time by default); the logits are
  the output's values at t_0..t_{J-1} and the loss is cross-entropy over them (softmax over the
  slots). With more slots than labels the extra (later) slots are not read.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..ops.multi_delay_linear import check_delays
from .multi_delay_linear import MultiDelayLinear
from .rodib_delays import arrival_times, draw_delays, max_arrival_count

__all__ = ["RoDiBHead", "arrival_times", "draw_delays", "max_arrival_count"]


class RoDiBHead(nn.Module):
    """Backbone features -> the single output unit's time series -> logits over labels.

    Stages: ``MultiDelayLinear(in_features, hidden[0], delays)`` -> ReLU -> ... ->
    ``MultiDelayLinear(hidden[-1], 1, delays)``; L = len(hidden) + 1 delayed stages sharing the
    M delays. The features enter as an impulse at t = 0.

    Args:
        in_features: F, the backbone's feature width.
        num_labels: J, the number of labels (J <= number of arrival times, else ValueError).
        delays: M distinct non-negative ints, or None to use ``draw_delays(num_delays, L)``.
        hidden: widths of the hidden delayed stages (() = one stage: F -> 1).
        num_delays: M when ``delays`` is None.
        slots: "earliest" (label j at the j-th earliest arrival time), "spread" (J arrival
            times evenly spaced in the sorted list, first and last included), or J explicit
            arrival times.
    Shapes: ``forward`` (B, F) -> (B, J) logits; ``series`` (B, F) -> (B, 1 + L*max(delays))
    output values over time. Buffers: ``label_times`` (J,) int64.
    """

    def __init__(self, in_features: int, num_labels: int, delays: Sequence[int] | None = None,
                 hidden: Sequence[int] = (), *, num_delays: int | None = None,
                 slots: str | Sequence[int] = "earliest", bias: bool = True):
        super().__init__()
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(f"RoDiBHead: num_labels must be an int >= 1, got {num_labels!r}")
        hidden = tuple(hidden)
        stages = len(hidden) + 1
        if delays is None:
            if num_delays is None:
                raise ValueError("RoDiBHead: give delays or num_delays")
            delays = draw_delays(num_delays, stages)
        elif num_delays is not None and num_delays != len(delays):
            raise ValueError(f"RoDiBHead: num_delays={num_delays} != len(delays)={len(delays)}")
        self.delays = check_delays(delays, "RoDiBHead")
        self.arrivals = arrival_times(self.delays, stages)
        if len(self.arrivals) < num_labels:
            raise ValueError(
                f"RoDiBHead: num_labels={num_labels} exceeds the {len(self.arrivals)} distinct "
                f"arrival times of delays={list(self.delays)} over {stages} stage(s); use more "
                f"delays, more stages (hidden), or delays with distinct sums (draw_delays)")
        self.label_times_list = self._slots(slots, num_labels)
        self.register_buffer("label_times", torch.tensor(self.label_times_list), persistent=False)
        dims = (in_features, *hidden, 1)
        self.stages = nn.ModuleList(MultiDelayLinear(a, b, self.delays, bias=bias)
                                    for a, b in zip(dims[:-1], dims[1:]))
        self.in_features, self.num_labels, self.hidden = in_features, num_labels, hidden

    def _slots(self, slots, j: int) -> tuple[int, ...]:
        arr = self.arrivals
        if isinstance(slots, str):
            if slots == "earliest":
                return arr[:j]
            if slots == "spread":
                if j == 1:
                    return (arr[0],)
                return tuple(arr[round(i * (len(arr) - 1) / (j - 1))] for i in range(j))
            raise ValueError(f"RoDiBHead: slots must be 'earliest', 'spread' or a sequence of "
                             f"arrival times, got {slots!r}")
        times = tuple(int(t) for t in slots)
        if len(times) != j or len(set(times)) != j:
            raise ValueError(f"RoDiBHead: slots must be {j} distinct times (one per label), got "
                             f"{list(times)}")
        bad = [t for t in times if t not in set(arr)]
        if bad:
            raise ValueError(f"RoDiBHead: slots {bad} are not arrival times {list(arr)}")
        return times

    def series(self, features: Tensor) -> Tensor:
        """(B, F) features -> (B, 1 + L*max(delays)) values of the single output unit."""
        if not isinstance(features, Tensor) or features.dim() != 2 \
                or features.shape[1] != self.in_features:
            got = tuple(features.shape) if isinstance(features, Tensor) else repr(features)
            raise ValueError(f"RoDiBHead: features must be (B, {self.in_features}), got {got}")
        h = features.unsqueeze(1)                      # impulse at t = 0: (B, 1, F)
        for i, stage in enumerate(self.stages):
            h = stage(h)
            if i < len(self.stages) - 1:
                h = torch.relu(h)
        return h.squeeze(-1)

    def forward(self, features: Tensor) -> Tensor:
        return self.series(features).index_select(1, self.label_times)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_labels={self.num_labels}, "
                f"hidden={list(self.hidden)}, delays={list(self.delays)}, "
                f"label_times={list(self.label_times_list)}")
