"""Declarative backend dispatch: each op lists its backends, one routine picks among them.

Backends, in an op's order of preference:

* ``native``    shallowkern._C (C++ CPU kernel, CUDA kernel);
* ``triton``    the Triton kernels (CUDA);
* ``vendor``    the aten composition on cuDNN/oneDNN (the bar our kernels must beat);
* ``reference`` the pure-PyTorch composition (CPU fallback, test oracle, benchmark baseline).

An op declares them once::

    DISPATCH = OpDispatch("wide_conv2d", [
        Backend("native", devices=("cpu",), dtypes=(torch.float32, torch.float64),
                needs_ext=True, prefer=_enough_images),
        Backend("triton", devices=("cuda",), dtypes=_HALF_AND_FLOAT, needs_triton=True,
                supports=_triton_supports),
        Backend("vendor", devices=("cuda",)),
        Backend("reference"),
    ], key=lambda input, weight, *rest: input)

and calls ``DISPATCH.select(*args)`` in its registered op. ``supports(*args)`` is a hard rule
(the kernel cannot run these inputs: returns a reason string, or None when it can);
``prefer(*args)`` is a soft rule applied only when nobody forced a backend (e.g. "fewer images
than threads: oneDNN is faster"). The first backend whose device, dtype, availability and
rules all pass is chosen; the last backend of every op must accept anything on its devices.

Forcing: ``with shallowkern.use_backend("reference"): ...`` (thread-local) or the
``SHALLOWKERN_BACKEND`` variable forces a backend wherever it is eligible. The forward's choice is
saved for the backward by each op (``select(..., backend=ctx_backend)``), so a forced or automatic
choice is the same in autograd's device thread. ``explain(op, *args)`` answers without running or
recording; ``last_backend(op)`` says what the most recent call ran; ``SHALLOWKERN_LOG=debug``
logs every choice.
"""

from __future__ import annotations

import logging
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .. import _knobs

log = logging.getLogger("shallowkern.ops")
if _knobs.get("ops.log"):
    logging.basicConfig()
    log.setLevel(getattr(logging, str(_knobs.get("ops.log")).upper()))

BACKENDS = ("native", "triton", "vendor", "reference")

Rule = Callable[..., "str | None"]


@dataclass(frozen=True)
class Choice:
    """A backend decision: ``backend`` is one of BACKENDS, ``reason`` says why in words."""

    backend: str
    reason: str


@dataclass(frozen=True)
class Backend:
    """One way an op can run, and when it may.

    Args:
        name: one of ``BACKENDS``.
        devices: device types it runs on (``None``: any).
        dtypes: input dtypes it takes (``None``: any).
        needs_ext / needs_cuda_ext / needs_triton: availability requirements.
        supports: hard eligibility rule, ``(*args) -> reason | None``.
        prefer: soft rule for automatic choice only, ``(*args) -> reason | None``.
        description: what runs, in words (the reason recorded when it is chosen).
    """

    name: str
    devices: tuple[str, ...] | None = None
    dtypes: tuple[torch.dtype, ...] | None = None
    needs_ext: bool = False
    needs_cuda_ext: bool = False
    needs_triton: bool = False
    supports: Rule | None = None
    prefer: Rule | None = None
    description: str = ""

    def __post_init__(self):
        if self.name not in BACKENDS:
            raise ValueError(f"Backend: name must be one of {BACKENDS}, got {self.name!r}")

    def ineligible(self, device: torch.device, dtype: torch.dtype | None, args: Sequence[Any],
                   automatic: bool) -> str | None:
        """Why this backend cannot (or, automatically, should not) run ``args``; None if it can."""
        if self.devices is not None and device.type not in self.devices:
            return f"{self.name} has no kernel for device {device.type}"
        if self.dtypes is not None and dtype is not None and dtype not in self.dtypes:
            return f"{self.name} has no {dtype} kernel"
        if self.needs_ext or self.needs_cuda_ext:
            from .. import _ext

            if not _ext.available():
                return f"shallowkern._C not loaded ({_ext.load_error})"
            if self.needs_cuda_ext and not _ext.has_cuda_kernels():
                return "shallowkern._C was built without CUDA kernels"
        if self.needs_triton and triton_missing() is not None:
            return triton_missing()
        if self.supports is not None:
            reason = self.supports(*args)
            if reason:
                return reason
        if automatic and self.prefer is not None:
            reason = self.prefer(*args)
            if reason:
                return reason
        return None


_triton_error: list[str | None] = []


def triton_missing() -> str | None:
    """None when Triton imports, else why not (checked once, lazily: import costs ~0.5 s)."""
    if not _triton_error:
        try:
            import triton  # noqa: F401
        except ImportError as exc:
            _triton_error.append(f"triton not importable ({exc})")
        else:
            _triton_error.append(None)
    return _triton_error[0]


class OpDispatch:
    """The backends of one op, in order of preference, and the one routine that picks among them.

    ``key(*args)`` returns the tensor whose device and dtype decide (default: the first argument).
    """

    def __init__(self, op: str, backends: Sequence[Backend],
                 key: Callable[..., torch.Tensor] | None = None):
        if not backends:
            raise ValueError(f"OpDispatch({op!r}): needs at least one backend")
        self.op = op
        self.backends = tuple(backends)
        self.key = key or (lambda *args: args[0])
        DISPATCHES[op] = self

    def names(self) -> tuple[str, ...]:
        """The distinct backend names, in order of preference."""
        return tuple(dict.fromkeys(b.name for b in self.backends))

    def choose(self, *args, backend: str | None = None) -> Choice:
        """Pick without recording. ``backend``: the forward's choice, honoured when eligible."""
        t = self.key(*args)
        device, dtype = t.device, (t.dtype if t.is_floating_point() else None)
        if backend:
            if backend not in BACKENDS:
                raise ValueError(f"{self.op}: backend must be one of {BACKENDS}, got {backend!r}")
            wanted, how = backend, "as the forward"
        else:
            wanted, how = forced(), "forced"
        notes = []
        if wanted is not None:
            # a name may appear once per device (e.g. native = C++ CPU kernel, CUDA kernel)
            match = [b for b in self.backends if b.name == wanted]
            whys = []
            for b in match:
                why = b.ineligible(device, dtype, args, automatic=False)
                if why is None:
                    return Choice(wanted, f"{how}: {b.description or wanted}")
                whys.append(why)
            if match:
                notes.append(f"{how} {wanted} not eligible: {'; '.join(whys)}")
            else:
                notes.append(f"{how} {wanted}: {self.op} has no {wanted} backend")
        for b in self.backends:
            why = b.ineligible(device, dtype, args, automatic=True)
            if why is None:
                reason = b.description or b.name
                if notes:
                    reason = f"{reason} ({'; '.join(notes)})"
                return Choice(b.name, reason)
            if b.devices is None or device.type in b.devices:  # other devices' backends: no news
                notes.append(why)
        raise RuntimeError(f"{self.op}: no backend can run these inputs ({'; '.join(notes)})")

    def select(self, *args, backend: str | None = None) -> Choice:
        """``choose`` and record the choice for ``last_backend`` (and the debug log)."""
        return record(self.op, self.choose(*args, backend=backend))


DISPATCHES: dict[str, OpDispatch] = {}

_state = threading.local()
_last: dict[str, Choice] = {}


def forced() -> str | None:
    """The backend forced by ``use_backend`` (this thread) or ``SHALLOWKERN_BACKEND``, if any."""
    return getattr(_state, "forced", None) or _knobs.get("ops.backend")


class use_backend:
    """Force a backend for ops run in this thread inside a ``with`` block, where eligible.

    >>> with shallowkern.use_backend("reference"):
    ...     y = model(x)

    ``None`` restores automatic choice inside the block. An unknown name raises at once. Calling
    it without ``with`` has no effect, and says so with a warning.
    """

    def __init__(self, name: str | None):
        if name is not None and name not in BACKENDS:
            raise ValueError(f"use_backend: name must be one of {BACKENDS} or None, got {name!r}")
        self.name = name
        self._entered = False

    def __enter__(self) -> "use_backend":
        self._entered = True
        self._previous = getattr(_state, "forced", None)
        _state.forced = self.name
        return self

    def __exit__(self, *exc) -> None:
        _state.forced = self._previous

    def __del__(self):
        if not getattr(self, "_entered", True):
            warnings.warn(f"use_backend({self.name!r}) was called without `with`: it has no "
                          "effect; write `with shallowkern.use_backend(...):`", RuntimeWarning,
                          stacklevel=2)


def record(op: str, choice: Choice) -> Choice:
    _last[op] = choice
    log.debug("%s -> %s (%s)", op, choice.backend, choice.reason)
    return choice


def last_backend(op: str) -> Choice | None:
    """The backend the most recent call of ``op`` (e.g. "wide_conv2d") ran on, with the reason."""
    return _last.get(op)


def explain(op: str, *args) -> Choice:
    """Which backend the registered op ``op`` would run for ``args`` (nothing runs or is recorded).

    ``args`` are the registered op's arguments; modules offer ``explain(input)`` that builds them.
    """
    try:
        dispatch = DISPATCHES[op]
    except KeyError:
        raise ValueError(f"explain: unknown op {op!r}; known: {sorted(DISPATCHES)}") from None
    return dispatch.choose(*args)
