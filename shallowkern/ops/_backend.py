"""Which kernel ran, and why: the visible side of each op's eligibility checks.

Every op picks a backend per call ("native" C++/CUDA, "triton", "vendor" = the cuDNN/aten op,
"reference" = the pure-PyTorch composition) and records the choice here. Users ask with
``shallowkern.ops.last_backend("wide_conv2d")`` or, before running, ``explain(...)`` on the op
module; ``SHALLOWKERN_LOG=debug`` logs every choice; ``use_backend("reference")`` forces one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass
from typing import Iterator

log = logging.getLogger("shallowkern.ops")
if os.environ.get("SHALLOWKERN_LOG", "").lower() == "debug":
    logging.basicConfig()
    log.setLevel(logging.DEBUG)

BACKENDS = ("native", "triton", "vendor", "reference")


@dataclass(frozen=True)
class Choice:
    """A backend decision: ``backend`` is one of BACKENDS, ``reason`` says why in words."""

    backend: str
    reason: str


_state = threading.local()
_last: dict[str, Choice] = {}


def forced() -> str | None:
    """The backend forced by ``use_backend`` or ``SHALLOWKERN_BACKEND``, if any."""
    name = getattr(_state, "forced", None) or os.environ.get("SHALLOWKERN_BACKEND") or None
    if name is not None and name not in BACKENDS:
        raise ValueError(f"SHALLOWKERN_BACKEND / use_backend: expected one of {BACKENDS}, got {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Force ``name`` for ops in this thread where it is eligible (None restores automatic)."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"use_backend: name must be one of {BACKENDS} or None, got {name!r}")
    previous = getattr(_state, "forced", None)
    _state.forced = name
    try:
        yield
    finally:
        _state.forced = previous


def record(op: str, choice: Choice) -> Choice:
    _last[op] = choice
    log.debug("%s -> %s (%s)", op, choice.backend, choice.reason)
    return choice


def last_backend(op: str) -> Choice | None:
    """The backend the most recent call of ``op`` (e.g. "wide_conv2d") ran on, with the reason."""
    return _last.get(op)
