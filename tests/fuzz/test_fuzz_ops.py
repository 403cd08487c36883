"""Fuzzing of the raw registered ops (issue 9, item 3): every op spec with a ``fuzz`` generator
(tests/specs/<op>.py) gets FUZZ_CASES seeded calls; each must either raise a clean Python
exception whose message names the broken rule, or return what the fp64 reference returns
(protocol: tests/fuzz/_protocol.py). Never a crash: scripts/test.sh also runs this file against
the ASan + UBSan build of the extension (tests/sanitize/).

Settings (environment, test-only): SHALLOWKERN_FUZZ_CASES (calls per spec, default 3300, i.e.
>= 1,000 per raw op of wide_conv2d's three), SHALLOWKERN_FUZZ_SEED, SHALLOWKERN_FUZZ_MIN_PER_OP
(calls each raw op must get; default 1000 when FUZZ_CASES >= 3300).
A failure prints the case's seed and description; rerun one case with
``SHALLOWKERN_FUZZ_SEED=<seed> SHALLOWKERN_FUZZ_CASES=1``.
"""

from __future__ import annotations

import collections
import os
import random
import re
import zlib

import pytest
import torch

from shallowkern.testing import OpSpec

from ._protocol import CLEAN_ERRORS, Accepted, Rejected

CASES = int(os.environ.get("SHALLOWKERN_FUZZ_CASES", "3300"))
SEED = int(os.environ.get("SHALLOWKERN_FUZZ_SEED", "20261129"))
MIN_PER_OP = int(os.environ.get("SHALLOWKERN_FUZZ_MIN_PER_OP",
                                "1000" if CASES >= 3300 else "0"))
MAX_REPORTED = 10


def _specs() -> list[OpSpec]:
    from shallowkern.testing import all_specs

    return [s for s in all_specs() if s.fuzz is not None and s.fuzz_reference is not None]


def _name(op) -> str:
    return getattr(op, "__name__", None) or str(op)


def run_case(spec: OpSpec, seed: int) -> tuple[str, str, str | None]:
    """One seeded case: (op name, outcome 'raised' | 'matched', failure text or None)."""
    sample = spec.fuzz(random.Random(seed))
    op, args = sample.args[0], sample.args[1:]
    verdict = spec.fuzz_reference(*sample.args, **sample.kwargs)
    assert isinstance(verdict, (Accepted, Rejected)), f"{spec.name}: fuzz_reference gave {verdict!r}"
    name = _name(op)
    where = f"seed {seed}: {sample.name}"
    try:
        result = op(*args, **sample.kwargs)
    except CLEAN_ERRORS as exc:
        msg = str(exc).strip()
        if isinstance(verdict, Accepted):
            return name, "raised", f"{where}\n  valid call raised {type(exc).__name__}: {msg[:500]}"
        if not msg or not re.search(verdict.pattern, msg):
            return name, "raised", (f"{where}\n  message does not match /{verdict.pattern}/: "
                                    f"{type(exc).__name__}: {msg[:500]}")
        return name, "raised", None
    if isinstance(verdict, Rejected):
        return name, "matched", f"{where}\n  invalid call (/{verdict.pattern}/) returned a result"
    try:
        verdict.check(result)
    except AssertionError as exc:
        return name, "matched", f"{where}\n  result differs from the reference: {str(exc)[:800]}"
    return name, "matched", None


@pytest.mark.parametrize("spec", _specs(), ids=lambda s: s.name)
def test_fuzz_raw_ops(spec: OpSpec):
    base = SEED ^ zlib.crc32(spec.name.encode())
    counts: collections.Counter = collections.Counter()
    failures = []
    torch.manual_seed(0)
    for i in range(CASES):
        seed = base + i
        name, outcome, failure = run_case(spec, seed)
        counts[name, outcome] += 1
        if failure:
            failures.append(failure)
    per_op = collections.Counter()
    for (name, _), v in counts.items():
        per_op[name] += v
    summary = ", ".join(f"{op}: {per_op[op]} ({counts[op, 'matched']} matched the reference, "
                        f"{counts[op, 'raised']} raised)" for op in sorted(per_op))
    print(f"\nfuzz {spec.name}: {CASES} cases; {summary}")
    assert not failures, (f"{len(failures)} of {CASES} fuzz cases failed ({summary}):\n"
                          + "\n".join(failures[:MAX_REPORTED]))
    for op in per_op:
        assert per_op[op] >= MIN_PER_OP, f"{op}: only {per_op[op]} cases (< {MIN_PER_OP})"
        assert counts[op, "matched"] > 0 and counts[op, "raised"] > 0, (
            f"{op}: the generator must produce valid and invalid calls ({summary})")


def test_there_is_a_fuzzed_spec():
    assert any(s.name == "wide_conv2d" for s in _specs())
