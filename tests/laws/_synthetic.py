"""Synthetic width sweeps for the laws tests: a known law plus seed and test-set noise."""

from __future__ import annotations

import numpy as np

WIDTHS = np.array([8.0, 16.0, 32.0, 64.0, 128.0, 256.0])


def law(d, A, rho, eps_inf=0.0):
    return A * np.asarray(d, dtype=float) ** (-rho) + eps_inf


def noisy_sweep(
    rng, *, A=0.9, rho=0.4, eps_inf=0.0, widths=WIDTHS, n_seeds=8, seed_sd=0.02, n_test=10000
):
    """Per-seed errors: true error × lognormal seed effect, then binomial test-set noise."""
    d = np.repeat(widths, n_seeds)
    p = law(d, A, rho, eps_inf) * np.exp(rng.normal(0.0, seed_sd, d.size))
    return d, rng.binomial(n_test, p) / n_test
