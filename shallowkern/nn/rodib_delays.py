"""Delay sets for RoDiB (issue 14): when an impulse reaches the output of L delayed stages
(``arrival_times``), how many times a B_L set gives (``max_arrival_count``), and drawing such a
set (``draw_delays``). The model they serve is ``shallowkern.nn.RoDiBHead`` (nn/rodib.py)."""

from __future__ import annotations

import itertools
import math
import random
from typing import Sequence

from ..ops.multi_delay_linear import check_delays

__all__ = ["arrival_times", "draw_delays", "max_arrival_count"]

def arrival_times(delays: Sequence[int], stages: int) -> tuple[int, ...]:
    """Sorted distinct times at which an impulse at t=0 reaches the output of ``stages``
    delayed stages that all use ``delays``: the sums of one delay per stage (multisets of size
    ``stages``; at most C(M + stages - 1, stages) values)."""
    taus = check_delays(delays, "arrival_times")
    if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1:
        raise ValueError(f"arrival_times: stages must be an int >= 1, got {stages!r}")
    return tuple(sorted({sum(c) for c in itertools.combinations_with_replacement(taus, stages)}))


def max_arrival_count(num_delays: int, stages: int) -> int:
    """C(M + L - 1, L): the number of distinct arrival times of a B_L delay set."""
    return math.comb(num_delays + stages - 1, stages)


def _all_sums_distinct(taus: Sequence[int], stages: int) -> bool:
    return len(arrival_times(taus, stages)) == max_arrival_count(len(taus), stages)


def draw_delays(num_delays: int, stages: int = 1, *, seed: int | None = None,
                max_delay: int | None = None, first: int = 1) -> tuple[int, ...]:
    """M distinct delays whose ``stages``-fold sums are all distinct (a B_L set), so the
    output has C(M+L-1, L) distinct arrival times.

    ``seed=None``: the greedy (Mian-Chowla-like) set, deterministic and compact: each next delay
    is the smallest integer >= ``first`` keeping all sums distinct ((1, 2, 4, 8, 13, 21, ...) for
    L = 2). With ``seed``: drawn uniformly from [first, max_delay] (default: twice the greedy
    set's largest delay) until the sums are distinct; ValueError if 10,000 draws fail.
    """
    if isinstance(num_delays, bool) or not isinstance(num_delays, int) or num_delays < 1:
        raise ValueError(f"draw_delays: num_delays must be an int >= 1 (M >= 1), got "
                         f"{num_delays!r}")
    if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1:
        raise ValueError(f"draw_delays: stages must be an int >= 1, got {stages!r}")
    if first < 0:
        raise ValueError(f"draw_delays: first must be >= 0, got {first}")
    greedy: list[int] = []
    c = first
    while len(greedy) < num_delays:
        if _all_sums_distinct(greedy + [c], stages):
            greedy.append(c)
        c += 1
    if seed is None:
        return tuple(greedy)
    hi = 2 * greedy[-1] if max_delay is None else max_delay
    if hi - first + 1 < num_delays:
        raise ValueError(f"draw_delays: max_delay={hi} leaves fewer than {num_delays} values")
    rng = random.Random(seed)
    for _ in range(10_000):
        taus = tuple(sorted(rng.sample(range(first, hi + 1), num_delays)))
        if _all_sums_distinct(taus, stages):
            return taus
    raise ValueError(f"draw_delays: no B_{stages} set of {num_delays} delays found in "
                     f"[{first}, {hi}] after 10,000 draws; raise max_delay")
