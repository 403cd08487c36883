"""Pareto frontier of error vs FLOPs, FLOPs-to-reach-error, and operations-per-error ratios."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from shallowkern.laws import FrontierPoint, flops_to_reach, ops_ratio, pareto_frontier

HAND = [
    {"family": "LeNet", "flops": 1e6, "error": 0.40},
    {"family": "LeNet", "flops": 2e6, "error": 0.35},
    {"family": "LeNet", "flops": 4e6, "error": 0.30},
    {"family": "LeNet", "flops": 4e6, "error": 0.32, "note": "same FLOPs, worse"},
    {"family": "LeNet", "flops": 8e6, "error": 0.31},  # more FLOPs, worse than 4e6
    {"family": "VGG-16", "flops": 1e8, "error": 0.33},  # dominated overall by LeNet@4e6
    {"family": "VGG-16", "flops": 2e8, "error": 0.25},
    {"family": "VGG-16", "flops": 3e8, "error": 0.26},
]


def _pts(points):
    return [(p.family, p.flops, p.error) for p in points]


def test_hand_example_frontier():
    # aggregate=False: the two 4e6 LeNet records are distinct configurations here
    fr = pareto_frontier(HAND, aggregate=False)
    assert _pts(fr.per_family["LeNet"]) == [
        ("LeNet", 1e6, 0.40),
        ("LeNet", 2e6, 0.35),
        ("LeNet", 4e6, 0.30),
    ]
    assert _pts(fr.per_family["VGG-16"]) == [("VGG-16", 1e8, 0.33), ("VGG-16", 2e8, 0.25)]
    assert _pts(fr.overall) == [
        ("LeNet", 1e6, 0.40),
        ("LeNet", 2e6, 0.35),
        ("LeNet", 4e6, 0.30),
        ("VGG-16", 2e8, 0.25),
    ]
    assert isinstance(fr.overall[0], FrontierPoint)
    json.dumps(fr.to_dict())


def test_no_frontier_point_is_dominated_random():
    rng = np.random.default_rng(0)
    recs = [
        {
            "family": f"f{rng.integers(3)}",
            "flops": float(rng.integers(1, 50)),
            "error": float(rng.uniform(0.05, 0.9)),
        }
        for _ in range(200)
    ]
    fr = pareto_frontier(recs, aggregate=False)
    for front, pool in [(fr.overall, recs)] + [
        (fr.per_family[f], [r for r in recs if r["family"] == f]) for f in fr.per_family
    ]:
        for p in front:
            assert not any(
                r["flops"] <= p.flops
                and r["error"] <= p.error
                and (r["flops"], r["error"]) != (p.flops, p.error)
                for r in pool
            )
        # and every non-frontier record is dominated by (or equal to) a frontier point
        for r in pool:
            assert any(p.flops <= r["flops"] and p.error <= r["error"] for p in front)


def test_seeds_are_averaged_per_configuration():
    recs = [
        {"family": "A", "flops": 1.0, "seed": 0, "error": 0.30},
        {"family": "A", "flops": 1.0, "seed": 1, "error": 0.50},  # mean 0.40
        {"family": "A", "flops": 2.0, "seed": 0, "error": 0.35},
    ]
    assert _pts(pareto_frontier(recs).per_family["A"]) == [
        ("A", 1.0, pytest.approx(0.40)),
        ("A", 2.0, 0.35),
    ]
    # unaggregated, the lucky seed dominates the 2.0 point
    assert _pts(pareto_frontier(recs, aggregate=False).per_family["A"]) == [("A", 1.0, 0.30)]


def test_flops_to_reach_frontier_interpolation():
    kw = {"aggregate": False}
    need = flops_to_reach(HAND, 0.325, **kw)
    # log-log interpolation between (2e6, 0.35) and (4e6, 0.30)
    t = math.log(0.325 / 0.35) / math.log(0.30 / 0.35)
    assert need["LeNet"] == pytest.approx(2e6 * 2**t)
    t = math.log(0.325 / 0.33) / math.log(0.25 / 0.33)
    assert need["VGG-16"] == pytest.approx(1e8 * 2**t)
    assert ops_ratio(HAND, 0.325, "VGG-16", "LeNet", **kw) == pytest.approx(
        need["VGG-16"] / need["LeNet"]
    )
    # at a frontier point exactly
    assert flops_to_reach(HAND, 0.35, **kw)["LeNet"] == pytest.approx(2e6)
    # outside the frontier's error range: nan, unless extrapolating the end segment
    assert math.isnan(flops_to_reach(HAND, 0.28, **kw)["LeNet"])
    ext = flops_to_reach(HAND, 0.28, extrapolate=True, **kw)["LeNet"]
    t = math.log(0.28 / 0.35) / math.log(0.30 / 0.35)
    assert ext == pytest.approx(2e6 * 2**t)
    # aggregated (default), the two 4e6 LeNet records average to 0.31, moving the frontier
    t = math.log(0.325 / 0.35) / math.log(0.31 / 0.35)
    assert flops_to_reach(HAND, 0.325)["LeNet"] == pytest.approx(2e6 * 2**t)


def test_ops_ratio_exact_power_laws_frontier_and_fit_agree():
    """LeNet ε = 2·F^-0.2, VGG ε = 5·F^-0.2: VGG needs (5/2)^(1/0.2) = 97.66× the FLOPs."""
    recs = []
    for fam, A, flops in (
        ("LeNet", 2.0, np.geomspace(1e6, 1e8, 6)),
        ("VGG-16", 5.0, np.geomspace(1e8, 1e10, 6)),
    ):
        for F in flops:
            for s in range(2):
                recs.append(
                    {"family": fam, "flops": float(F), "seed": s, "error": float(A * F**-0.2)}
                )
    e = 0.08  # reached by both within their measured ranges (0.126 ... 0.050)
    expected = 2.5**5
    assert ops_ratio(recs, e, "VGG-16", "LeNet") == pytest.approx(expected, rel=1e-9)
    assert ops_ratio(recs, e, "VGG-16", "LeNet", method="fit") == pytest.approx(expected, rel=1e-6)
    need = flops_to_reach(recs, e, method="fit")
    assert need["LeNet"] == pytest.approx((2.0 / e) ** 5, rel=1e-6)


def test_flops_to_reach_fit_with_floor_below_floor_is_inf():
    F = np.geomspace(1e6, 1e9, 6)
    recs = [{"family": "X", "flops": float(f), "error": float(0.5 * f**-0.2 + 0.05)} for f in F]
    assert flops_to_reach(recs, 0.04, method="fit", floor=True)["X"] == math.inf
    got = flops_to_reach(recs, 0.06, method="fit", floor=True)["X"]
    assert got == pytest.approx((0.5 / 0.01) ** 5, rel=1e-4)


def test_frontier_columns_and_macs_key():
    cols = {"family": ["a", "a", "b"], "macs": [1.0, 2.0, 1.5], "error": [0.5, 0.4, 0.3]}
    fr = pareto_frontier(cols, x_key="macs")
    assert _pts(fr.overall) == [("a", 1.0, 0.5), ("b", 1.5, 0.3)]


@pytest.mark.parametrize(
    "records, match",
    [
        ([], "empty"),
        ([{"family": "a", "error": 0.3}], "flops"),
        ([{"family": "a", "flops": 0.0, "error": 0.3}], "flops"),
        ([{"family": "a", "flops": 1.0, "error": 1.0}], "error"),
        ([{"family": "a", "flops": float("nan"), "error": 0.3}], "flops"),
        ({"family": ["a"], "flops": [1.0, 2.0], "error": [0.3, 0.2]}, "mismatched"),
        ("nonsense", "records"),
    ],
)
def test_frontier_bad_input(records, match):
    with pytest.raises(ValueError, match=match):
        pareto_frontier(records)


def test_flops_to_reach_bad_input():
    with pytest.raises(ValueError, match="error"):
        flops_to_reach(HAND, 1.5)
    with pytest.raises(ValueError, match="method"):
        flops_to_reach(HAND, 0.3, method="magic")
    with pytest.raises(ValueError, match="numerator"):
        ops_ratio(HAND, 0.3, "ResNet", "LeNet")
    one = [{"family": "solo", "flops": 1e6, "error": 0.3}]
    with pytest.raises(ValueError, match="family 'solo'"):
        flops_to_reach(one, 0.3, method="fit")
