"""Power-law fits: recovery of known parameters, weights, FLOPs fits, result object."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import nnls

from shallowkern.laws import analytic_ci, fit_power_law, fit_vs_flops, fit_vs_width
from shallowkern.laws.fit import _nnls2_grid

from ._synthetic import WIDTHS, law, noisy_sweep  # noqa: F401


# --- exact data -----------------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [True, False])
def test_plain_law_exact_recovery(weighted):
    d = np.repeat(WIDTHS, 3)
    f = fit_vs_width(d, law(d, 0.9, 0.45), weighted=weighted)
    assert f.A == pytest.approx(0.9, rel=1e-10)
    assert f.rho == pytest.approx(0.45, rel=1e-10)
    assert f.eps_inf == 0.0
    assert f.r2 == pytest.approx(1.0)
    assert np.allclose(f.residuals, 0.0, atol=1e-12)
    assert (f.n_points, f.n_obs, f.space, f.x_label) == (6, 18, "log", "width")


def test_floor_law_exact_recovery():
    d = WIDTHS
    f = fit_vs_width(d, law(d, 0.8, 0.6, 0.1), floor=True)
    assert (f.A, f.rho, f.eps_inf) == pytest.approx((0.8, 0.6, 0.1), rel=1e-6)
    assert f.r2 == pytest.approx(1.0)
    assert f.space == "linear" and f.n_params == 3


def test_floor_fit_with_no_floor_finds_zero():
    f = fit_vs_width(WIDTHS, law(WIDTHS, 0.9, 0.45), floor=True)
    assert f.eps_inf == pytest.approx(0.0, abs=1e-6)
    assert f.rho == pytest.approx(0.45, rel=1e-4)


@settings(max_examples=30, deadline=None)
@given(
    A=st.floats(0.05, 5.0),
    rho=st.floats(0.05, 2.0),
    lo=st.floats(0.0, 3.0),
    scale=st.floats(-3.0, 9.0),
)
def test_property_exact_recovery_and_scale_invariance(A, rho, lo, scale):
    """Exact power-law data is recovered for any A, ρ and x range; rescaling x by c maps
    A -> A·c^ρ and leaves ρ unchanged (the FLOPs-vs-width relation)."""
    d = np.logspace(lo, lo + 2.5, 5)
    err = law(d, A, rho)
    err = err / (2 * err.max())  # keep errors in (0, 1): A' = A / (2·max)
    A_true = A / (2 * law(d, A, rho).max())
    f = fit_power_law(d, err)
    assert f.rho == pytest.approx(rho, rel=1e-8)
    assert f.A == pytest.approx(A_true, rel=1e-7)
    c = 10.0**scale
    g = fit_power_law(d * c, err)
    assert g.rho == pytest.approx(rho, rel=1e-8)
    assert g.A == pytest.approx(A_true * c**rho, rel=1e-6)


# --- noisy data -----------------------------------------------------------------------------


def test_plain_law_noisy_recovery():
    rng = np.random.default_rng(0)
    d, e = noisy_sweep(rng, A=0.9, rho=0.4)
    f = fit_vs_width(d, e)
    assert f.rho == pytest.approx(0.4, abs=0.02)
    assert f.A == pytest.approx(0.9, rel=0.08)
    assert f.r2 > 0.99
    ci = analytic_ci(f)
    assert ci["rho"][0] < 0.4 < ci["rho"][1]
    assert ci["A"][0] < 0.9 < ci["A"][1]


def test_floor_law_noisy_recovery():
    rng = np.random.default_rng(1)
    d, e = noisy_sweep(rng, A=0.8, rho=0.6, eps_inf=0.1, widths=np.geomspace(4, 1024, 9))
    f = fit_vs_width(d, e, floor=True)
    assert f.eps_inf == pytest.approx(0.1, abs=0.01)
    assert f.rho == pytest.approx(0.6, abs=0.1)
    assert f.A == pytest.approx(0.8, rel=0.2)
    ci = analytic_ci(f)
    for name, truth in (("A", 0.8), ("rho", 0.6), ("eps_inf", 0.1)):
        assert ci[name][0] < truth < ci[name][1], name


def test_floor_fit_beats_plain_fit_when_a_floor_exists():
    rng = np.random.default_rng(2)
    d, e = noisy_sweep(rng, A=0.8, rho=0.6, eps_inf=0.1, widths=np.geomspace(4, 1024, 9))
    plain, floor = fit_vs_width(d, e), fit_vs_width(d, e, floor=True)
    # chi2() is in linear space for both, so they are comparable; AIC penalises the extra parameter
    assert floor.chi2() + 2 * floor.n_params < plain.chi2() + 2 * plain.n_params
    assert floor.chi2() < 0.2 * plain.chi2()
    # the plain law has to flatten to mimic the floor
    assert plain.rho < 0.6


def test_floor_fit_does_not_help_without_a_floor():
    rng = np.random.default_rng(3)
    d, e = noisy_sweep(rng, A=0.9, rho=0.4)
    plain, floor = fit_vs_width(d, e), fit_vs_width(d, e, floor=True)
    assert floor.eps_inf < 0.02
    # one extra parameter buys little: AIC does not prefer the floor by a wide margin
    assert floor.chi2() + 2 * floor.n_params > plain.chi2() + 2 * plain.n_params - 4


def test_nnls2_grid_matches_scipy_nnls():
    rng = np.random.default_rng(4)
    for _ in range(50):
        n = rng.integers(3, 9)
        B = rng.uniform(0.01, 2.0, size=(4, n))
        y = rng.normal(0.3, 0.3, size=n)
        w = rng.uniform(0.5, 3.0, size=n)
        a, c, cost = _nnls2_grid(B, y, w)
        for i in range(B.shape[0]):
            M = np.column_stack([B[i], np.ones(n)]) * np.sqrt(w)[:, None]
            sol, rnorm = nnls(M, y * np.sqrt(w))
            assert cost[i] == pytest.approx(rnorm**2, rel=1e-7, abs=1e-12)
            assert (a[i], c[i]) == pytest.approx(tuple(sol), rel=1e-5, abs=1e-8)


# --- weights --------------------------------------------------------------------------------


def test_weights_are_inverse_variance_floored_at_binomial_noise():
    n_test = 10000
    d = np.array([10, 20, 20, 20, 40, 40])
    e = np.array([0.30, 0.20, 0.22, 0.24, 0.15, 0.15])
    f = fit_vs_width(d, e, n_test=n_test)
    # one seed: binomial floor p(1-p)/n_test
    assert f.var_mean[0] == pytest.approx(0.3 * 0.7 / n_test)
    # three seeds with a spread: seed variance / 3
    assert f.var_mean[1] == pytest.approx(np.var([0.20, 0.22, 0.24], ddof=1) / 3)
    # identical seeds: zero seed variance -> floored, divided by 2 seeds
    assert f.var_mean[2] == pytest.approx(0.15 * 0.85 / n_test / 2)
    # log-space weights by the delta method
    assert np.allclose(f.weights, f.mean_error**2 / f.var_mean)
    g = fit_vs_width(d, e, n_test=n_test, floor=False, weighted=False)
    assert np.all(g.weights == 1.0)
    h = fit_vs_width(d, e, n_test=n_test, floor=True)
    assert np.allclose(h.weights, 1.0 / h.var_mean)


def test_n_test_changes_single_seed_weight():
    d, e = [8, 16, 32], [0.4, 0.3, 0.2]
    small, big = fit_vs_width(d, e, n_test=1000), fit_vs_width(d, e, n_test=100000)
    assert np.allclose(big.weights / small.weights, 100.0)


# --- inputs, FLOPs, result object ------------------------------------------------------------


def test_list_of_dicts_and_columns_match_arrays():
    rng = np.random.default_rng(5)
    d, e = noisy_sweep(rng, n_seeds=3)
    seeds = np.tile(np.arange(3), WIDTHS.size)
    recs = [{"width": int(w), "seed": int(s), "error": float(p)} for w, s, p in zip(d, seeds, e)]
    a = fit_vs_width(d, e, seeds)
    b = fit_vs_width(recs)
    c = fit_vs_width({"width": d, "error": e, "seed": seeds})
    assert (a.A, a.rho) == pytest.approx((b.A, b.rho), rel=1e-12)
    assert (a.A, a.rho) == pytest.approx((c.A, c.rho), rel=1e-12)
    assert b.n_obs == d.size


def test_fit_vs_flops_large_values_and_relation_to_width():
    # conv MACs of a width-d layer grow ∝ d², so ρ_flops = ρ_width / 2 and A_flops = A·c^(ρ/2)
    d = np.repeat(WIDTHS, 2)
    e = law(d, 0.9, 0.4, 0.05)
    macs = 3.1e6 * d**2
    fw = fit_vs_width(d, e, floor=True)
    ff = fit_vs_flops(macs, e, floor=True, x_label="macs")
    assert ff.x_label == "macs"
    assert ff.rho == pytest.approx(fw.rho / 2, rel=1e-5)
    assert ff.eps_inf == pytest.approx(0.05, rel=1e-5)
    assert ff.A == pytest.approx(0.9 * 3.1e6**0.2, rel=1e-4)
    assert ff.predict(3.1e6 * 100.0**2) == pytest.approx(law(100.0, 0.9, 0.4, 0.05), rel=1e-6)
    flops_records = [{"flops": float(m), "error": float(x)} for m, x in zip(macs, e)]
    assert fit_vs_flops(flops_records).x_label == "flops"


def test_predict_and_inverse():
    f = fit_vs_width(WIDTHS, law(WIDTHS, 0.8, 0.6, 0.1), floor=True)
    assert f.predict(50.0) == pytest.approx(law(50.0, 0.8, 0.6, 0.1), rel=1e-6)
    assert isinstance(f.predict(50.0), float)
    assert f.predict(np.array([8.0, 16.0])).shape == (2,)
    assert f.x_for_error(f.predict(77.0)) == pytest.approx(77.0, rel=1e-6)
    assert f.x_for_error(0.05) == np.inf  # below the floor
    with pytest.raises(ValueError, match="x"):
        f.predict(0.0)


def test_result_is_frozen_and_serialisable():
    f = fit_vs_width(WIDTHS, law(WIDTHS, 0.9, 0.45))
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.rho = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError):
        f.residuals[0] = 1.0
    d = json.loads(json.dumps(f.to_dict()))
    assert d["rho"] == pytest.approx(0.45) and d["eps_inf"] == 0.0 and d["n_points"] == 6
    assert set(d) >= {"A", "rho", "eps_inf", "r2", "residuals", "n_points", "weights"}


def test_analytic_ci_modes():
    rng = np.random.default_rng(6)
    d, e = noisy_sweep(rng)
    f = fit_vs_width(d, e)
    ci_abs, ci_scaled = analytic_ci(f), analytic_ci(f, absolute_sigma=False)
    for ci in (ci_abs, ci_scaled):
        assert ci["rho"][0] < f.rho < ci["rho"][1]
        assert ci["A"][0] < f.A < ci["A"][1]
        assert ci["eps_inf"] == (0.0, 0.0)
    assert analytic_ci(f, 0.99)["rho"][1] > ci_abs["rho"][1]
    two = fit_vs_width([8, 16], [0.4, 0.3])
    with pytest.raises(ValueError, match="absolute_sigma"):
        analytic_ci(two, absolute_sigma=False)
    with pytest.raises(ValueError, match="level"):
        analytic_ci(f, 1.5)
