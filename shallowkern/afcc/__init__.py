"""AFCC pruning (Tzach et al., Phys. Rev. E 111, 065307, 2025): single-filter performance,
filter label clusters, connection masks (AFCC and random-AFCC), channel orderings and the
``prune`` workflow. Masked layers: ``shallowkern.AFCCConv2d`` / ``shallowkern.AFCCLinear``.
"""

from .clusters import FilterClusters, clusters, single_filter_performance
from .masks import channel_permutation, connection_masks, random_labels, random_masks

__all__ = ["FilterClusters", "channel_permutation", "clusters", "connection_masks",
           "random_labels", "random_masks", "single_filter_performance"]
