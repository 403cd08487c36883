"""What a fuzz case expects, shared by the case generators (tests/fuzz/gen_*.py) and the driver
(tests/fuzz/test_fuzz_ops.py).

An op joins the fuzzer through its op spec (tests/specs/<op>.py): ``SPEC.fuzz(rng) -> Sample``
returns one call, ``Sample(args=(op, *call_args), kwargs=call_kwargs, name=...)``, where ``op`` is
the raw registered op (``torch.ops.shallowkern.<name>.default``); ``SPEC.fuzz_reference(op,
*call_args, **call_kwargs)`` says what must happen, from the documented rules and the pure-torch
reference, WITHOUT calling ``op``: either

* ``Rejected(pattern, why)``: the call is invalid; ``op`` must raise one of ``CLEAN_ERRORS`` whose
  message matches ``pattern`` (a regex naming the offending argument or rule), or
* ``Accepted(check, why)``: the call is valid; ``op`` must return, and ``check(result)`` asserts
  that the result matches the reference (raising AssertionError otherwise).

Never a crash: the sanitizer build (tests/sanitize/) runs the same driver, so an out-of-bounds
access fails the run even where the values happen to come out right.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

# Python exceptions a bad call may raise (TORCH_CHECK -> RuntimeError, ValueError, IndexError,
# TypeError; the dispatcher's schema errors -> RuntimeError / TypeError).
CLEAN_ERRORS = (RuntimeError, ValueError, TypeError, IndexError, NotImplementedError)


@dataclass(frozen=True)
class Rejected:
    pattern: str  # re.search against str(exception)
    why: str = ""


@dataclass(frozen=True)
class Accepted:
    check: Callable[[Any], None]
    why: str = ""
