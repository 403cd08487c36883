"""Fuzzing of the raw registered ops (issue 9, item 3): every op spec with a ``fuzz`` generator
(tests/specs/<op>.py) gets FUZZ_CASES seeded calls; each must either raise a clean Python
exception whose message names the broken rule, or return what the fp64 reference returns
(protocol: tests/fuzz/_protocol.py). Never a crash: scripts/test.sh also runs this file against
the ASan + UBSan build of the extension (tests/sanitize/).

By default each spec runs until every raw op its generator calls got SHALLOWKERN_FUZZ_MIN_PER_OP
calls (default 1,000; wide_conv2d's generator spreads over three ops, so ~3,300 calls).
Other settings (environment, test-only): SHALLOWKERN_FUZZ_CASES (a fixed number of calls per
spec instead, e.g. a quick run), SHALLOWKERN_FUZZ_SEED (base seed), SHALLOWKERN_FUZZ_ONLY (one
case: the seed a failure prints).
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

FIXED_CASES = os.environ.get("SHALLOWKERN_FUZZ_CASES")
SEED = int(os.environ.get("SHALLOWKERN_FUZZ_SEED", "20261129"))
ONLY = os.environ.get("SHALLOWKERN_FUZZ_ONLY")
MIN_PER_OP = int(os.environ.get("SHALLOWKERN_FUZZ_MIN_PER_OP", "1000"))
MAX_REPORTED = 10


def _specs() -> list[OpSpec]:
    from shallowkern.testing import all_specs

    return [s for s in all_specs() if s.fuzz is not None and s.fuzz_reference is not None]


def _name(op) -> str:
    return getattr(op, "__name__", None) or str(op)


def _is_op(v) -> bool:
    return isinstance(v, (torch._ops.OpOverload, torch._ops.OpOverloadPacket))


def _up(v):
    if isinstance(v, torch.Tensor) and v.is_floating_point():
        return v.double()
    if isinstance(v, (list, tuple)):
        return type(v)(_up(e) for e in v)
    return v


def _plain_verdict(spec: OpSpec, args: tuple, kwargs: dict):
    """The plain form of the spec contract (tests/specs/<op>.py docstring of OpSpec): the sample
    holds the registered op's arguments and fuzz_reference is the pure-torch function with its
    signature. Valid = the reference (in float64) returns; then the op must match it."""
    try:  # validity: the reference on the call's own dtypes
        spec.fuzz_reference(*args, **kwargs)
    except CLEAN_ERRORS as exc:
        return Rejected(".", f"the reference raised {type(exc).__name__}: {exc}")
    want = spec.fuzz_reference(*_up(args), **{k: _up(v) for k, v in kwargs.items()})
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    dtype = next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)
    # A generous reduction length for the tolerance: the largest non-input tensor.
    red = min(10**6, max([t.numel() for t in tensors[1:]] + [1]))

    def check(result):
        from shallowkern.testing import assert_close

        got = result if isinstance(result, (tuple, list)) else (result,)
        ref = want if isinstance(want, (tuple, list)) else (want,)
        assert len(got) == len(ref), (len(got), len(ref))
        for i, (a, r) in enumerate(zip(got, ref)):
            if isinstance(r, torch.Tensor) and r.is_floating_point():
                assert a.shape == r.shape, (i, a.shape, r.shape)
                assert_close(a, r, dtype, red, msg=f"output {i}")

    return Accepted(check)


def run_case(spec: OpSpec, seed: int) -> tuple[str, str, str | None]:
    """One seeded case: (op name, outcome 'raised' | 'matched', failure text or None)."""
    sample = spec.fuzz(random.Random(seed))
    if sample.args and _is_op(sample.args[0]):  # tests/fuzz/_protocol.py
        op, args = sample.args[0], sample.args[1:]
        verdict = spec.fuzz_reference(*sample.args, **sample.kwargs)
    else:  # plain: the spec's own registered op, compared with fuzz_reference
        op, args = getattr(torch.ops.shallowkern, spec.name).default, sample.args
        verdict = _plain_verdict(spec, args, sample.kwargs)
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
    per_op: collections.Counter = collections.Counter()
    failures = []
    torch.manual_seed(0)
    seeds = [int(ONLY)] if ONLY else None
    i = 0
    while True:
        if seeds is not None:
            if i >= len(seeds):
                break
            seed = seeds[i]
        elif FIXED_CASES is not None:
            if i >= int(FIXED_CASES):
                break
            seed = base + i
        else:
            if (per_op and min(per_op.values()) >= MIN_PER_OP) or i >= 20 * MIN_PER_OP:
                break
            seed = base + i
        name, outcome, failure = run_case(spec, seed)
        counts[name, outcome] += 1
        per_op[name] += 1
        if failure:
            failures.append(failure)
        i += 1
    CASES = i
    summary = ", ".join(f"{op}: {per_op[op]} ({counts[op, 'matched']} matched the reference, "
                        f"{counts[op, 'raised']} raised)" for op in sorted(per_op))
    print(f"\nfuzz {spec.name}: {CASES} cases; {summary}")
    assert not failures, (f"{len(failures)} of {CASES} fuzz cases failed ({summary}):\n"
                          + "\n".join(failures[:MAX_REPORTED]))
    if seeds is not None or FIXED_CASES is not None:
        return
    for op in per_op:
        assert per_op[op] >= MIN_PER_OP, f"{op}: only {per_op[op]} cases (< {MIN_PER_OP})"
        assert counts[op, "matched"] > 0 and counts[op, "raised"] > 0, (
            f"{op}: the generator must produce valid and invalid calls ({summary})")


def test_there_is_a_fuzzed_spec():
    assert any(s.name == "wide_conv2d" for s in _specs())
