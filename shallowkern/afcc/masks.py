"""AFCC connection masks, random-AFCC masks and channel orderings (AFCC, steps 4-5).

A conv layer's (out, in) mask keeps the kernel pair (i, j) iff the label sets of out-filter i
(layer l+1) and in-filter j (layer l) intersect; the read-out keeps (class c, filter n) iff c is
one of filter n's labels. Label sets are given as (filters, labels) bool membership matrices,
e.g. ``FilterClusters.labels`` (each filter's union of cluster labels).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def _membership(m: Tensor, name: str) -> Tensor:
    if not isinstance(m, Tensor) or m.dim() != 2:
        raise ValueError(f"{name} must be a (filters, labels) membership matrix, got "
                         f"{tuple(m.shape) if isinstance(m, Tensor) else type(m)}")
    if m.dtype != torch.bool:
        if m.is_floating_point() or m.is_complex() or ((m != 0) & (m != 1)).any():
            raise ValueError(f"{name} must be bool or 0/1 integers, got {m.dtype}")
        m = m.bool()
    return m


def connection_masks(out_labels: Tensor, in_labels: Tensor | None = None) -> Tensor:
    """The AFCC mask between two layers, or between the last conv layer and the read-out.

    Args:
        out_labels: (K, L) bool, label sets of the out-filters (layer l+1).
        in_labels: (C, L) bool, label sets of the in-filters (layer l). None: the read-out mask,
            where out_labels are the last conv layer's (C, L) and the result is (L, C) with
            keep[c, n] = c in labels(n).
    Returns:
        (K, C) bool mask (True keeps the kernel pair), on out_labels' device.
    """
    out_labels = _membership(out_labels, "connection_masks: out_labels")
    if in_labels is None:
        return out_labels.t().contiguous()
    in_labels = _membership(in_labels, "connection_masks: in_labels").to(out_labels.device)
    if in_labels.shape[1] != out_labels.shape[1]:
        raise ValueError(f"connection_masks: out_labels has {out_labels.shape[1]} labels but "
                         f"in_labels has {in_labels.shape[1]}")
    return (out_labels.double() @ in_labels.double().t()) > 0


def random_labels(num_filters: int, num_labels: int,
                  labels_per_filter: int | Sequence[int] | Tensor,
                  generator: torch.Generator | None = None) -> Tensor:
    """Random-AFCC label sets: filter n gets ``labels_per_filter`` distinct labels (one int for
    all, or one count per filter, e.g. an AFCC layer's ``labels.sum(1)``) and every label is used
    equally often (counts differ by at most one when all filters take the same number).

    Returns (num_filters, num_labels) bool. Filters are visited in random order, each taking the
    least-used labels (ties broken at random).
    """
    if isinstance(labels_per_filter, int):
        per = [labels_per_filter] * num_filters
    else:
        per = [int(v) for v in (labels_per_filter.tolist() if isinstance(labels_per_filter, Tensor)
                                else labels_per_filter)]
    if num_filters < 0 or num_labels < 1 or len(per) != num_filters or not all(
            0 <= k <= num_labels for k in per):
        raise ValueError(f"random_labels: need num_filters ({num_filters}) >= 0, num_labels "
                         f"({num_labels}) >= 1 and 0 <= labels per filter <= num_labels for "
                         f"each of the {num_filters} filters")
    member = torch.zeros(num_filters, num_labels, dtype=torch.bool)
    used = torch.zeros(num_labels)
    for n in torch.randperm(num_filters, generator=generator).tolist():
        key = used + torch.rand(num_labels, generator=generator) * 0.5  # ties at random
        pick = torch.argsort(key)[:per[n]]
        member[n, pick] = True
        used[pick] += 1
    return member


def random_masks(num_filters: Sequence[int], num_labels: int,
                 labels_per_filter: int | Sequence[int],
                 generator: torch.Generator | None = None, readout: bool = False
                 ) -> tuple[list[Tensor], list[Tensor]]:
    """Random-AFCC: random label sets per layer and the masks between consecutive layers.

    Args:
        num_filters: widths of consecutive conv layers (l, l+1, ...), at least 2 (or 1 with
            readout=True).
        num_labels: L. labels_per_filter: labels each filter gets (one int, or one per layer).
        readout: also return the (L, last width) read-out mask.
    Returns:
        (label sets [(F_i, L) bool], masks [(F_{i+1}, F_i) bool, ..., (+ read-out)]).
        With 5 of 100 labels per filter, a pair is kept with probability
        1 - C(95,5)/C(100,5) ~= 0.23.
    """
    widths = list(num_filters)
    if len(widths) < (1 if readout else 2):
        raise ValueError("random_masks: num_filters needs two or more layer widths "
                         "(or one with readout=True)")
    per = ([int(labels_per_filter)] * len(widths) if isinstance(labels_per_filter, int)
           else list(labels_per_filter))
    if len(per) != len(widths):
        raise ValueError(f"random_masks: labels_per_filter has {len(per)} entries for "
                         f"{len(widths)} layers")
    sets = [random_labels(w, num_labels, k, generator) for w, k in zip(widths, per)]
    masks = [connection_masks(b, a) for a, b in zip(sets[:-1], sets[1:])]
    if readout:
        masks.append(connection_masks(sets[-1]))
    return sets, masks


def channel_permutation(labels: Tensor, scores: Tensor | None = None) -> Tensor:
    """Order a layer's channels by dominant label so that AFCC masks become near-block-diagonal.

    Args:
        labels: (F, L) bool label sets. scores: optional (F, L) strengths (e.g. the SFP diagonal
            V_n[j, j]); the dominant label is the strongest member, else the lowest-numbered one.
    Returns:
        (F,) int64 permutation: channel ``perm[i]`` goes to position i. Channels are grouped by
        dominant label (label order), then by their whole label set, then by index (stable);
        channels with no label come last.
    """
    labels = _membership(labels, "channel_permutation: labels")
    f, nl = labels.shape
    if scores is None:
        scores = -torch.arange(nl, dtype=torch.float64).expand(f, nl)
    elif scores.shape != labels.shape:
        raise ValueError(f"channel_permutation: scores must have the labels' shape "
                         f"{tuple(labels.shape)}, got {tuple(scores.shape)}")
    s = torch.where(labels, scores.double().cpu(), torch.tensor(float("-inf"), dtype=torch.float64))
    dominant = torch.where(labels.any(1), s.argmax(1), torch.full((f,), nl))
    weights = 2.0 ** -torch.arange(1, nl + 1, dtype=torch.float64)  # label set as a number
    pattern = labels.double().cpu() @ weights
    keys = sorted(range(f), key=lambda i: (int(dominant[i]), -float(pattern[i]), i))
    return torch.tensor(keys, dtype=torch.int64)
