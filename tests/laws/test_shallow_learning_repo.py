"""The numbers printed by github.com/sleepingcat4/Shallow-learning (law-le.py, law-custom.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shallowkern.laws import (
    repo_conservation_buggy,
    repo_conservation_correct,
    repo_power_law_constant,
    sleepingcat4_report,
)
from shallowkern.laws.shallow_learning_repo import (
    CUSTOM_DEPTH,
    CUSTOM_WIDTH,
    LENET5_DEPTH,
    LENET5_WIDTH,
    int64_wrap,
)


def test_inputs_are_the_scripts_lists():
    assert LENET5_DEPTH == (1, 6, 6, 16, 16, 120, 84, 10)
    assert LENET5_WIDTH == (3072, 4704, 1176, 1600, 400, 120, 84, 10)


def test_power_law_constant_is_log10_of_fc_width_ratio():
    c = repo_power_law_constant()
    assert round(c, 3) == -0.924
    assert c == pytest.approx(math.log10(10 / 84), rel=1e-15)
    assert c == pytest.approx(-0.9242792860618816, rel=1e-15)  # the README's printout


def test_conservation_buggy_value_is_int64_overflow():
    buggy = repo_conservation_buggy()
    assert round(buggy, 2) == 232.08
    assert buggy == pytest.approx(232.08061813867866, rel=1e-12)  # the README's printout
    exact = math.prod(d * w for d, w in zip(LENET5_DEPTH, LENET5_WIDTH))
    assert exact > 2**63  # does not fit in int64 ...
    wrapped = int64_wrap(exact)
    assert wrapped == 8416101803648614400 == exact % 2**64  # ... and wraps to a positive value
    # numpy's int64 prod is exactly this two's-complement wrap
    assert (
        int(
            np.prod(np.array(LENET5_DEPTH, dtype=np.int64) * np.array(LENET5_WIDTH, dtype=np.int64))
        )
        == wrapped
    )
    assert float(wrapped) ** (1 / 8) == pytest.approx(buggy, rel=1e-14)


def test_conservation_correct_value_is_the_geometric_mean():
    good = repo_conservation_correct()
    assert round(good, 2) == 5636.28
    exact = math.prod(d * w for d, w in zip(LENET5_DEPTH, LENET5_WIDTH))
    assert good == pytest.approx(float(exact) ** (1 / 8), rel=1e-13)
    assert good**8 == pytest.approx(1.0184491509344285e30, rel=1e-12)


def test_custom_model_overflows_to_zero():
    d, w = CUSTOM_DEPTH[:-1], CUSTOM_WIDTH[:-1]
    assert repo_conservation_buggy(d, w) == 0.0
    assert round(repo_conservation_correct(d, w), 2) == 256954.87
    assert round(repo_power_law_constant(CUSTOM_DEPTH, CUSTOM_WIDTH), 3) == -2.311


def test_report():
    r = sleepingcat4_report()
    le = r["lenet5"]
    assert round(le["power_law_constant"], 3) == -0.924
    assert round(le["conservation_buggy"], 2) == 232.08
    assert round(le["conservation_correct"], 2) == 5636.28
    assert le["products"] == [3072, 28224, 7056, 25600, 6400, 14400, 7056, 100]
    assert le["int64_product"] == 8416101803648614400
    assert le["paper_q"] == [168.0, 160.0]
    assert r["custom"]["int64_product"] == 0


def test_int64_wrap_negative_gives_nan():
    assert int64_wrap(2**63) == -(2**63)
    assert int64_wrap(-5) == -5
    # a product that wraps negative: numpy's float power of a negative base is nan
    assert int64_wrap(3 * 2**62) == -(2**62)
    assert math.isnan(repo_conservation_buggy((2**31, 1), (3 * 2**31, 1)))  # 3·2^62 wraps negative


def test_repo_functions_bad_input():
    with pytest.raises(ValueError, match="equal length"):
        repo_conservation_correct((1, 2), (3,))
    with pytest.raises(ValueError, match="positive integers"):
        repo_conservation_buggy((1, 0), (3, 4))
    with pytest.raises(ValueError, match="equal length"):
        repo_power_law_constant((), ())
