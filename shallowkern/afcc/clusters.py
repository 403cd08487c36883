"""Single-filter performance (SFP) and label clusters of each filter (AFCC, steps 1-3).

AFCC (Tzach et al., Phys. Rev. E 111, 065307 (2025), arXiv 2501.12880) looks at each filter n
of a conv layer L alone through a bias-free linear read-out ``W`` (classes, filters * S) trained
on L's (pooled) output ``h`` (images, filters, S) with everything up to L frozen:

    f_n(b, c)   = sum_s W[c, n, s] * h[b, n, s]                (filter n's vote for class c)
    V_n[l, c]   = sum_{b : label(b) = l} f_n(b, c)              (single-filter performance)
    V_n        <- V_n / max(V_n);   B_n = (V_n >= threshold)    (binarised, threshold 0.3)

Row l of B_n says which classes filter n votes for when shown images of label l. A *cluster*
is a set of labels j with B_n[j, j] = 1 whose whole sub-block of B_n is ones (the filter
recognises each of them and confuses them only with each other); clusters are grown greedily
from the strongest diagonal entry. *Noise* is the number of ones of B_n outside the clusters'
sub-blocks.

Filters with several clusters: the lab's code indexes a flat list of all clusters by filter
number, which is only right when every filter has exactly one cluster. Here each filter's
label set is the **union of its clusters' labels** (``FilterClusters.labels``); masks are built
from that set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


def _shape(t) -> object:
    return tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__


def single_filter_performance(features: Tensor, labels: Tensor, weight: Tensor,
                              num_classes: int | None = None, normalize: bool = True) -> Tensor:
    """SFP matrices V_n of every filter.

    Args:
        features: (B, F, S) or (B, F, H, W) layer outputs h (after BN/ReLU/pooling), any float.
        labels: (B,) int64 true labels in [0, num_classes).
        weight: (classes, F * S) bias-free read-out trained on the flattened features
            (``nn.Linear(F * S, classes, bias=False).weight``), same device as ``features``.
        num_classes: number of labels (default: ``weight.shape[0]``).
        normalize: divide each V_n by its maximum (when the maximum is positive).
    Returns:
        (F, L, C) float64: V[n, l, c] as above (L = num_classes rows, C = weight.shape[0]).
    """
    if not isinstance(features, Tensor) or features.dim() not in (3, 4):
        raise ValueError("single_filter_performance: features must be (B, F, S) or (B, F, H, W), "
                         f"got {_shape(features)}")
    h = features.flatten(2).double()
    b, f, s = h.shape
    if not isinstance(labels, Tensor) or labels.shape != (b,) or labels.dtype not in (
            torch.int64, torch.int32, torch.uint8):
        raise ValueError(f"single_filter_performance: labels must be an int tensor of shape "
                         f"({b},), got {getattr(labels, 'dtype', type(labels))} {_shape(labels)}")
    if not isinstance(weight, Tensor) or weight.dim() != 2 or weight.shape[1] != f * s:
        raise ValueError(f"single_filter_performance: weight must be (classes, {f}*{s}={f * s}) "
                         f"for features of {f} filters x {s} positions, got "
                         f"{tuple(weight.shape) if isinstance(weight, Tensor) else type(weight)}")
    classes = weight.shape[0]
    num_classes = classes if num_classes is None else int(num_classes)
    labels = labels.long().to(h.device)
    if b and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"single_filter_performance: labels must lie in [0, {num_classes})")
    w = weight.detach().double().to(h.device).view(classes, f, s)
    fields = torch.einsum("cns,bns->bnc", w, h)                       # f_n(b, c)
    v = fields.new_zeros(num_classes, f, classes).index_add_(0, labels, fields)
    v = v.permute(1, 0, 2).contiguous()                               # (F, L, C)
    if normalize:
        top = v.flatten(1).amax(1).clamp_min(torch.finfo(v.dtype).tiny)
        v = v / top.view(f, 1, 1)
    return v


@dataclass
class FilterClusters:
    """Clusters of every filter of one layer.

    clusters[n]: list of frozensets of labels (cluster order: strongest seed first).
    labels: (F, L) bool membership, labels[n, j] = j is in one of filter n's clusters (the
        union of its clusters, see the module docstring).
    noise: (F,) int64, ones of B_n outside its clusters' sub-blocks.
    binary: (F, L, L) bool, the binarised B_n.
    """

    clusters: list[list[frozenset[int]]]
    labels: Tensor
    noise: Tensor
    binary: Tensor = field(repr=False)

    @property
    def labels_per_filter(self) -> Tensor:
        return self.labels.sum(1)

    def summary(self) -> dict:
        """Mean labels, clusters and noise per filter; share of filters with no cluster."""
        n = max(len(self.clusters), 1)
        return dict(filters=len(self.clusters),
                    mean_labels=float(self.labels.sum().item() / n),
                    mean_clusters=sum(len(c) for c in self.clusters) / n,
                    multi_cluster_filters=sum(len(c) > 1 for c in self.clusters),
                    empty_filters=int((self.labels.sum(1) == 0).sum().item()),
                    mean_noise=float(self.noise.double().mean()) if len(self.clusters) else 0.0)


def clusters(sfp: Tensor, threshold: float = 0.3) -> FilterClusters:
    """Label clusters of each filter from its (normalised) SFP matrix.

    Args:
        sfp: (F, L, L) SFP matrices (rows: true label, columns: voted class), normalised by
            their maximum as ``single_filter_performance`` returns them; or already binary.
        threshold: B_n = sfp_n >= threshold (0.3 in the paper); must lie in (0, 1].
    Returns:
        FilterClusters. Greedy growth: seeds are the labels j with B_n[j, j] = 1 taken by
        decreasing V_n[j, j]; a label k joins the current cluster if B_n is one on the whole
        sub-block of cluster + {k} (both directions); labels are tried by decreasing V_n[k, k].
    """
    if not isinstance(sfp, Tensor) or sfp.dim() != 3 or sfp.shape[1] != sfp.shape[2]:
        raise ValueError("clusters: sfp must be (F, L, L) square per filter, got "
                         f"{tuple(sfp.shape) if isinstance(sfp, Tensor) else type(sfp)}")
    if not (0.0 < float(threshold) <= 1.0):
        raise ValueError(f"clusters: threshold must lie in (0, 1], got {threshold}")
    v = sfp.detach().double().cpu()
    if torch.isnan(v).any():
        raise ValueError("clusters: sfp contains NaN")
    binary = v >= threshold
    f, nl, _ = v.shape
    member = torch.zeros(f, nl, dtype=torch.bool)
    noise = torch.zeros(f, dtype=torch.int64)
    out: list[list[frozenset[int]]] = []
    for n in range(f):
        b = binary[n]
        diag = torch.diagonal(v[n])
        order = [j for j in torch.argsort(diag, descending=True, stable=True).tolist() if b[j, j]]
        left = list(order)
        found: list[frozenset[int]] = []
        while left:
            cl = [left.pop(0)]
            for k in list(left):
                idx = cl + [k]
                if bool(b[idx][:, idx].all()):
                    cl.append(k)
                    left.remove(k)
            found.append(frozenset(cl))
        covered = torch.zeros(nl, nl, dtype=torch.bool)
        for cl in found:
            idx = torch.tensor(sorted(cl))
            covered[idx.unsqueeze(1), idx.unsqueeze(0)] = True
            member[n, idx] = True
        noise[n] = int((b & ~covered).sum())
        out.append(found)
    return FilterClusters(out, member, noise, binary)
