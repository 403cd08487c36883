"""Scaling laws for wide shallow networks (numpy/scipy only, no torch).

Power-law fits of test error against width or FLOPs with bootstrap and analytic confidence
intervals, a held-out extrapolation check, Pareto frontiers of error vs FLOPs across model
families, the conservation-law audit of Meir et al. (Sci Rep 2023, "Efficient shallow learning as
an alternative to deep learning"), and a corrected reproduction of the numbers printed by
github.com/sleepingcat4/Shallow-learning.  See docs/laws_example.md for a worked example.
"""

from .bootstrap import BootstrapCI, HoldoutResult, bootstrap_ci, holdout_check
from .conservation import (
    ConservationAudit,
    KScan,
    conservation_audit,
    k_scan,
    lenet_layers,
    lenet_optimal_k,
)
from .fit import PowerLawFit, analytic_ci, fit_power_law, fit_vs_flops, fit_vs_width
from .frontier import FrontierPoint, ParetoFrontier, flops_to_reach, ops_ratio, pareto_frontier
from .shallow_learning_repo import (
    repo_conservation_buggy,
    repo_conservation_correct,
    repo_power_law_constant,
    sleepingcat4_report,
)

__all__ = [
    "BootstrapCI",
    "ConservationAudit",
    "FrontierPoint",
    "HoldoutResult",
    "KScan",
    "ParetoFrontier",
    "PowerLawFit",
    "analytic_ci",
    "bootstrap_ci",
    "conservation_audit",
    "fit_power_law",
    "fit_vs_flops",
    "fit_vs_width",
    "flops_to_reach",
    "holdout_check",
    "k_scan",
    "lenet_layers",
    "lenet_optimal_k",
    "ops_ratio",
    "pareto_frontier",
    "repo_conservation_buggy",
    "repo_conservation_correct",
    "repo_power_law_constant",
    "sleepingcat4_report",
]
