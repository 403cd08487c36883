"""Input parsing, validation and per-x grouping shared by the fitting routines.

Records are ``(x, seed, error)`` triples: ``x`` is the width d (or FLOPs/MACs), ``error`` the
test error *rate* of one trained seed.  They arrive either as parallel arrays or as a list of
dicts (``{"width": 64, "seed": 0, "error": 0.31}``).  Everything downstream works on the
per-x summary built here, so validation happens exactly once and with argument names in the
messages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Accepted dict keys, first match wins.  The x column is looked up under the caller's label first.
_ERR_KEYS = ("error", "err", "p")
_SEED_KEYS = ("seed",)


def _lookup(rec: Mapping[str, Any], keys: Sequence[str], where: str, what: str) -> Any:
    for k in keys:
        if k in rec:
            return rec[k]
    raise ValueError(f"{where} has no {what} key (expected one of {list(keys)})")


def _is_records(obj: Any) -> bool:
    if isinstance(obj, Mapping):
        return True
    if isinstance(obj, (list, tuple)) and len(obj) > 0:
        return all(isinstance(r, Mapping) for r in obj)
    return False


def _records_to_columns(records: Any, x_keys: Sequence[str]) -> tuple[Any, Any, Any]:
    """Split a list of dicts (or a dict of columns) into x, err, seed columns."""
    if isinstance(records, Mapping):  # dict of columns
        x = _lookup(records, x_keys, "records", "x")
        err = _lookup(records, _ERR_KEYS, "records", "error")
        seeds = next((records[k] for k in _SEED_KEYS if k in records), None)
        return x, err, seeds
    x = [_lookup(r, x_keys, f"records[{i}]", "x") for i, r in enumerate(records)]
    err = [_lookup(r, _ERR_KEYS, f"records[{i}]", "error") for i, r in enumerate(records)]
    has_seed = [any(k in r for k in _SEED_KEYS) for r in records]
    if any(has_seed) and not all(has_seed):
        raise ValueError("records: either every record has a 'seed' or none does")
    seeds = None
    if all(has_seed):
        seeds = [_lookup(r, _SEED_KEYS, f"records[{i}]", "seed") for i, r in enumerate(records)]
    return x, err, seeds


def as_float_array(values: Any, name: str, *, positive: bool = True) -> np.ndarray:
    """1-D finite float array, optionally strictly positive; ValueError names ``name``."""
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: need at least one result")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values (nan/inf)")
    if positive and np.any(arr <= 0):
        raise ValueError(f"{name} must be > 0, got min {arr.min()!r}")
    return arr


@dataclass(frozen=True, eq=False)
class Grouped:
    """Per-x summary of validated records.

    ``samples[j]`` holds the per-seed errors at ``x[j]``; ``mean``/``var_mean`` are the
    statistics the fits consume.  ``var_mean[j] = max(s_j^2, p_j(1-p_j)/n_test) / n_j``: the seed
    variance floored at binomial test-set noise (so a single seed still gets a finite weight),
    divided by the number of seeds because the fit uses the mean.
    """

    x: np.ndarray
    samples: tuple[np.ndarray, ...]
    mean: np.ndarray
    var_mean: np.ndarray
    n_test: int
    n_obs: int


def per_x_stats(samples: Sequence[np.ndarray], n_test: int) -> tuple[np.ndarray, np.ndarray]:
    """Means and floored variances of the mean for each group of per-seed errors."""
    mean = np.array([s.mean() for s in samples])
    n = np.array([s.size for s in samples], dtype=float)
    seed_var = np.array([s.var(ddof=1) if s.size > 1 else 0.0 for s in samples])
    binom_var = mean * (1.0 - mean) / n_test
    return mean, np.maximum(seed_var, binom_var) / n


def check_n_test(n_test: Any) -> int:
    if isinstance(n_test, bool) or not isinstance(n_test, (int, np.integer)) or n_test < 1:
        raise ValueError(f"n_test must be a positive integer (test-set size), got {n_test!r}")
    return int(n_test)


def parse_records(
    x: Any,
    err: Any = None,
    seeds: Any = None,
    *,
    x_label: str = "x",
    n_test: int = 10000,
    min_distinct: int = 2,
) -> Grouped:
    """Validate ``(x, seed, error)`` records and group them by x.

    ``x`` may be an array (then ``err`` is required) or a list of dicts / dict of columns
    (then ``err`` must be None).  Raises ValueError naming the offending argument for: empty
    input, mismatched lengths, non-finite or non-positive x or errors, errors >= 1, duplicate
    (x, seed) records, and fewer than ``min_distinct`` distinct x values.
    """
    n_test = check_n_test(n_test)
    x_name, err_name = f"x ({x_label})", "err"
    if err is None:
        if not _is_records(x):
            if isinstance(x, (list, tuple)) and len(x) == 0:
                raise ValueError("records is empty: need at least one result")
            raise ValueError("err is required unless x is a list of dicts (records)")
        x, err, rec_seeds = _records_to_columns(x, (x_label, "x"))
        seeds = rec_seeds if seeds is None else seeds
        x_name, err_name = f"records[{x_label!r}]", "records['error']"
    xa = as_float_array(x, x_name)
    ea = as_float_array(err, err_name)
    if xa.size != ea.size:
        raise ValueError(f"{x_name} and {err_name} have mismatched lengths {xa.size} != {ea.size}")
    if np.any(ea >= 1):
        raise ValueError(f"{err_name} must be error rates in (0, 1), got max {ea.max()!r}")
    if seeds is not None:
        sa = np.asarray(seeds)
        if sa.shape != xa.shape:
            raise ValueError(f"seeds has length {sa.size}, expected {xa.size} (one per result)")
        pairs = set()
        for xi, si in zip(xa.tolist(), sa.tolist()):
            if (xi, si) in pairs:
                raise ValueError(f"seeds: duplicate record for {x_label}={xi:g}, seed={si!r}")
            pairs.add((xi, si))
    xu, inv = np.unique(xa, return_inverse=True)
    if xu.size < min_distinct:
        raise ValueError(
            f"{x_name} has {xu.size} distinct value(s); this fit needs at least {min_distinct}"
        )
    samples = tuple(ea[inv == j] for j in range(xu.size))
    mean, var_mean = per_x_stats(samples, n_test)
    return Grouped(xu, samples, mean, var_mean, n_test, int(xa.size))
