"""Conservation-law audit q = √(H·W)·depth and the k = d2/d1 scan."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shallowkern.laws import conservation_audit, k_scan, lenet_layers, lenet_optimal_k


def test_lenet_layers_map_sizes():
    assert lenet_layers(6, d2=16) == [("conv1", 28, 28, 6), ("conv2", 10, 10, 16)]
    assert lenet_layers(10, 2.8)[1][3] == pytest.approx(28.0)


def test_lenet_k_2_8_conserves_exactly():
    for d1 in (5, 10, 20, 64):
        a = conservation_audit(lenet_layers(d1, 2.8))
        assert a.max_rel_dev == pytest.approx(0.0, abs=1e-12)
        assert a.q == pytest.approx([28.0 * d1, 28.0 * d1])
    assert lenet_optimal_k() == pytest.approx(2.8)


def test_classic_lenet_deviation():
    a = conservation_audit([("conv1", 28, 28, 6), ("conv2", 10, 10, 16)])
    assert a.q.tolist() == [168.0, 160.0]
    assert a.ratios[1] == pytest.approx(160 / 168)
    assert a.max_rel_dev == pytest.approx(1 / 21)
    assert a.conserving_ratio.tolist() == pytest.approx([1.0, 2.8])
    json.dumps(a.to_dict())


def test_three_layers_dict_input_non_square():
    layers = [
        {"name": "c1", "H": 32, "W": 8, "depth": 4},  # √256 = 16 -> q = 64
        {"name": "c2", "H": 8, "W": 8, "depth": 8},  # 8 -> 64
        {"name": "c3", "H": 2, "W": 8, "depth": 24},  # 4 -> 96
    ]
    a = conservation_audit(layers)
    assert a.names == ("c1", "c2", "c3")
    assert a.q.tolist() == [64.0, 64.0, 96.0]
    assert a.max_rel_dev == pytest.approx(0.5)
    assert a.conserving_ratio.tolist() == pytest.approx([1.0, 2.0, 4.0])


def test_other_lenet_geometry():
    # 28x28 input (MNIST): conv1 24, pool 12, conv2 8 -> k = 3
    assert lenet_optimal_k(input_size=28) == pytest.approx(3.0)


def _kscan_data(k_true=2.8, seeds=4, rng=None):
    k = np.repeat([1.0, 1.5, 2.0, 2.8, 4.0, 5.6, 8.0], seeds)
    err = 0.30 + 0.02 * (np.log(k) - np.log(k_true)) ** 2
    if rng is not None:
        err = err + rng.normal(0, 0.001, err.size)
    return k, err


def test_k_scan_exact_parabola():
    k, err = _kscan_data()
    r = k_scan(k, err)
    assert r.k_star == pytest.approx(2.8, rel=1e-6)
    assert r.best_k == 2.8
    assert r.vertex_in_range
    a, b, c = r.coeffs
    assert a == pytest.approx(0.02, rel=1e-6)
    json.dumps(r.to_dict())


def test_k_scan_noisy_and_records():
    k, err = _kscan_data(k_true=2.5, rng=np.random.default_rng(0))
    recs = [{"k": float(a), "error": float(b)} for a, b in zip(k, err)]
    r = k_scan(recs)
    assert r.k_star == pytest.approx(2.5, rel=0.1)
    assert r.best_k in (2.0, 2.8)


def test_k_scan_concave_has_no_vertex():
    k = np.array([1.0, 2.0, 4.0, 8.0])
    err = 0.3 - 0.01 * np.log(k) ** 2
    r = k_scan(k, err)
    assert np.isnan(r.k_star) and not r.vertex_in_range
    assert r.best_k == 8.0


def test_k_scan_vertex_outside_range():
    k = np.array([1.0, 1.5, 2.0])
    err = 0.3 + 0.02 * (np.log(k) - np.log(2.8)) ** 2
    r = k_scan(k, err)
    assert r.k_star == pytest.approx(2.8, rel=1e-6) and not r.vertex_in_range


@pytest.mark.parametrize(
    "layers, match",
    [
        ([], "non-empty"),
        ([("c1", 28, 28)], r"layers\[0\]"),
        ([("c1", 28, 0, 6)], "W"),
        ([("c1", 28, 28, -1)], "depth"),
        ([("c1", float("nan"), 28, 6)], "H"),
        ([{"name": "c1", "H": 28, "W": 28}], "depth"),
        ([("c1", "a", 28, 6)], "numbers"),
    ],
)
def test_conservation_bad_input(layers, match):
    with pytest.raises(ValueError, match=match):
        conservation_audit(layers)


def test_k_scan_and_lenet_bad_input():
    with pytest.raises(ValueError, match="at least 3"):
        k_scan([1.0, 2.0], [0.3, 0.2])
    with pytest.raises(ValueError, match="k"):
        k_scan([0.0, 1.0, 2.0], [0.3, 0.2, 0.25])
    with pytest.raises(ValueError, match="exactly one"):
        lenet_layers(6)
    with pytest.raises(ValueError, match="exactly one"):
        lenet_layers(6, 2.8, d2=16)
    with pytest.raises(ValueError, match="d1"):
        lenet_layers(0, 2.8)
    with pytest.raises(ValueError, match="too small"):
        lenet_layers(6, 2.8, input_size=12)
