"""Bad input gives a ValueError that names the offending argument."""

from __future__ import annotations

import numpy as np
import pytest

from shallowkern.laws import bootstrap_ci, fit_power_law, fit_vs_width

GOOD_X = [8.0, 16.0, 32.0]
GOOD_E = [0.4, 0.3, 0.2]


@pytest.mark.parametrize(
    "x, err, kwargs, match",
    [
        ([], [], {}, r"x \(x\) is empty"),
        ([], None, {}, "records is empty"),
        (GOOD_X, [], {}, "err is empty"),
        (
            [8.0, 8.0, 8.0],
            [0.4, 0.41, 0.39],
            {},
            r"1 distinct value\(s\); this fit needs at least 2",
        ),
        ([8.0, 16.0, 16.0], [0.4, 0.3, 0.31], {"floor": True}, "needs at least 3"),
        ([0.0, 16.0, 32.0], GOOD_E, {}, r"x \(x\) must be > 0"),
        ([-8.0, 16.0, 32.0], GOOD_E, {}, r"x \(x\) must be > 0"),
        ([np.nan, 16.0, 32.0], GOOD_E, {}, r"x \(x\) contains non-finite"),
        ([np.inf, 16.0, 32.0], GOOD_E, {}, r"x \(x\) contains non-finite"),
        (GOOD_X, [0.4, 0.0, 0.2], {}, "err must be > 0"),
        (GOOD_X, [0.4, -0.1, 0.2], {}, "err must be > 0"),
        (GOOD_X, [0.4, np.nan, 0.2], {}, "err contains non-finite"),
        (GOOD_X, [0.4, 1.0, 0.2], {}, r"err must be error rates in \(0, 1\)"),
        (GOOD_X, [0.4, 30.0, 0.2], {}, r"err must be error rates in \(0, 1\)"),  # percent, not rate
        (GOOD_X, [0.4, 0.3], {}, "mismatched lengths"),
        (GOOD_X, GOOD_E, {"seeds": [0, 1]}, "seeds has length"),
        ([8.0, 8.0, 16.0], [0.4, 0.41, 0.3], {"seeds": [0, 0, 0]}, "seeds: duplicate record"),
        (GOOD_X, GOOD_E, {"n_test": 0}, "n_test"),
        (GOOD_X, GOOD_E, {"n_test": 10.5}, "n_test"),
        (GOOD_X, GOOD_E, {"rho_bounds": (2.0, 1.0), "floor": True}, "rho_bounds"),
        (GOOD_X, GOOD_E, {"n_grid": 1, "floor": True}, "n_grid"),
        ([[8.0, 16.0]], [[0.4, 0.3]], {}, "1-D"),
        (["a", "b"], [0.4, 0.3], {}, "numeric"),
        (GOOD_X, None, {}, "err is required"),
    ],
)
def test_fit_bad_input(x, err, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_power_law(x, err, **kwargs)


def test_width_label_in_messages():
    with pytest.raises(ValueError, match=r"x \(width\) must be > 0"):
        fit_vs_width([0.0, 1.0], [0.3, 0.2])


@pytest.mark.parametrize(
    "records, match",
    [
        ([{"width": 8, "error": 0.3}, {"width": 16}], r"records\[1\] has no error key"),
        ([{"width": 8, "error": 0.3}, {"error": 0.2}], r"records\[1\] has no x key"),
        (
            [{"width": 8, "error": 1.2}, {"width": 16, "error": 0.2}],
            r"records\['error'\] must be error rates",
        ),
        (
            [{"width": -8, "error": 0.3}, {"width": 16, "error": 0.2}],
            r"records\['width'\] must be > 0",
        ),
        (
            [{"width": 8, "error": 0.3, "seed": 0}, {"width": 16, "error": 0.2}],
            "every record has a 'seed'",
        ),
        ({"width": [8, 16]}, "records has no error key"),
    ],
)
def test_records_bad_input(records, match):
    with pytest.raises(ValueError, match=match):
        fit_vs_width(records)


def test_bootstrap_bad_options():
    x, e = [8, 8, 16, 16], [0.4, 0.41, 0.3, 0.31]
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci(x, e, n_boot=1)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci(x, e, n_boot=10.0)
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(x, e, n_boot=10, level=0.0)
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(x, e, n_boot=10, level=95)
    with pytest.raises(ValueError, match="distinct"):
        bootstrap_ci([8, 8], [0.4, 0.41], n_boot=10)
