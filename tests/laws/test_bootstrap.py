"""Stratified bootstrap CIs (incl. coverage) and the held-out extrapolation check."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shallowkern.laws import analytic_ci, bootstrap_ci, fit_vs_width, holdout_check

from ._synthetic import WIDTHS, law, noisy_sweep  # noqa: F401


def test_bootstrap_basic_properties():
    rng = np.random.default_rng(0)
    d, e = noisy_sweep(rng)
    r = bootstrap_ci(d, e, n_boot=300, rng=1, x_label="width")
    assert r.fit.x_label == "width" and r.n_boot == 300 and r.n_failed == 0
    assert r.samples.shape == (300, 3)
    for name, point in (("A", r.fit.A), ("rho", r.fit.rho)):
        lo, hi = r.ci[name]
        assert lo < point < hi
    assert r.ci["eps_inf"] == (0.0, 0.0)
    # the bootstrap and the analytic interval for ρ agree in scale
    width_boot = np.diff(r.ci["rho"])[0]
    width_an = np.diff(analytic_ci(r.fit)["rho"])[0]
    assert 1 / 3 < width_boot / width_an < 3
    # a 50 % interval sits inside the 95 % one
    r50 = bootstrap_ci(d, e, n_boot=300, rng=1, level=0.5)
    assert r.ci["rho"][0] <= r50.ci["rho"][0] <= r50.ci["rho"][1] <= r.ci["rho"][1]
    json.dumps(r.to_dict())


def test_bootstrap_is_reproducible_and_accepts_generator():
    rng = np.random.default_rng(0)
    d, e = noisy_sweep(rng, n_seeds=4)
    a = bootstrap_ci(d, e, n_boot=50, rng=7)
    b = bootstrap_ci(d, e, n_boot=50, rng=np.random.default_rng(7))
    c = bootstrap_ci(d, e, n_boot=50, rng=8)
    assert a.ci == b.ci
    assert a.ci != c.ci


def test_bootstrap_resamples_within_widths_only(monkeypatch):
    """Every replicate mean at a width is the mean of n_j draws from *that* width's seeds."""
    import itertools

    import shallowkern.laws.bootstrap as bs

    seen = []
    real = bs.fit_grouped

    def spy(g, **kw):
        if kw.get("mean") is not None:
            seen.append(np.array(kw["mean"]))
        return real(g, **kw)

    monkeypatch.setattr(bs, "fit_grouped", spy)
    d = np.repeat([10.0, 20.0, 40.0], 3)
    e = np.array([0.40, 0.42, 0.44, 0.30, 0.31, 0.33, 0.20, 0.21, 0.25])
    bootstrap_ci(d, e, n_boot=100, rng=0)
    assert len(seen) == 100
    for j in range(3):
        allowed = {
            round(sum(c) / 3, 12)
            for c in itertools.combinations_with_replacement(e[3 * j : 3 * j + 3], 3)
        }
        assert {round(float(m[j]), 12) for m in seen} <= allowed


def test_single_seed_per_width_warns_and_collapses():
    with pytest.warns(RuntimeWarning, match="single seed"):
        r = bootstrap_ci(WIDTHS, law(WIDTHS, 0.9, 0.4), n_boot=20, rng=0)
    assert r.ci["rho"][0] == pytest.approx(r.ci["rho"][1])


def test_bootstrap_coverage_plain_law():
    """60 seeded synthetic sweeps (6 widths × 8 seeds, binomial + seed noise): the 95 %
    percentile intervals for A and ρ must cover the truth in a generous band (≥ 0.8; the seed
    bootstrap under-covers a little with 8 seeds per width)."""
    rng = np.random.default_rng(123)
    n_data, hits = 60, {"A": 0, "rho": 0}
    for i in range(n_data):
        d, e = noisy_sweep(rng, A=0.9, rho=0.4)
        r = bootstrap_ci(d, e, n_boot=150, rng=i)
        hits["A"] += r.ci["A"][0] <= 0.9 <= r.ci["A"][1]
        hits["rho"] += r.ci["rho"][0] <= 0.4 <= r.ci["rho"][1]
    cov = {k: v / n_data for k, v in hits.items()}
    assert all(c >= 0.8 for c in cov.values()), cov


def test_bootstrap_coverage_floor_law():
    """Same with a floor (fewer datasets and replicates: each refit is a bounded
    least-squares problem).  ε∞ near its bound and the A–ρ trade-off make the percentile
    intervals somewhat less exact, so the band is ≥ 0.75."""
    rng = np.random.default_rng(321)
    truth = {"A": 0.9, "rho": 0.4, "eps_inf": 0.05}
    n_data, hits = 40, dict.fromkeys(truth, 0)
    for i in range(n_data):
        d, e = noisy_sweep(rng, **truth)
        r = bootstrap_ci(d, e, n_boot=60, rng=i, floor=True)
        for k, v in truth.items():
            hits[k] += r.ci[k][0] <= v <= r.ci[k][1]
    cov = {k: v / n_data for k, v in hits.items()}
    assert all(c >= 0.75 for c in cov.values()), cov


# --- held-out check ---------------------------------------------------------------------------


def test_holdout_exact_data():
    d = np.repeat(WIDTHS, 3)
    e = law(d, 0.9, 0.4) * np.tile([0.99, 1.0, 1.01], WIDTHS.size)
    h = holdout_check(d, e, n_boot=100, rng=0)
    assert h.x_held == 256.0
    assert h.fit.n_points == 5 and h.fit.n_obs == 15
    assert h.observed == pytest.approx(law(256.0, 0.9, 0.4))
    assert h.predicted == pytest.approx(h.observed, rel=1e-3)
    assert h.rel_error == pytest.approx((h.predicted - h.observed) / h.observed)
    assert abs(h.rel_error) < 1e-3
    assert h.in_interval and h.interval[0] < h.observed < h.interval[1]
    json.dumps(h.to_dict())


def test_holdout_detects_missing_floor():
    """A strong floor: the plain law extrapolates too low and misses the held-out point,
    the floor law predicts it."""
    rng = np.random.default_rng(9)
    widths = np.geomspace(4, 2048, 10)
    d, e = noisy_sweep(rng, A=0.8, rho=0.7, eps_inf=0.12, widths=widths, seed_sd=0.01)
    plain = holdout_check(d, e, n_boot=100, rng=0)
    floor = holdout_check(d, e, n_boot=100, rng=0, floor=True)
    assert plain.predicted < plain.observed and not plain.in_interval
    assert plain.rel_error < -0.03
    assert floor.in_interval
    assert abs(floor.rel_error) < abs(plain.rel_error)


def test_holdout_needs_enough_widths():
    with pytest.raises(ValueError, match="at least 3"):
        holdout_check([8, 8, 16, 16], [0.4, 0.41, 0.3, 0.31], n_boot=10)
    with pytest.raises(ValueError, match="at least 4"):
        holdout_check([8, 16, 32], [0.4, 0.3, 0.2], n_boot=10, floor=True)
    fit_vs_width([8, 16, 32], [0.4, 0.3, 0.2], floor=True)  # the fit itself is fine with 3
