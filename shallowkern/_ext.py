"""Loads the compiled extension ``shallowkern._C`` once, or records why it is missing.

Every op works without it (Triton on CUDA, the pure-PyTorch reference everywhere); the native
C++/CUDA kernels are a speed-up, never a requirement. ``import shallowkern`` warns once when
the extension was built but cannot load; a pure-Python install (never built) logs at debug level.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from types import ModuleType

import torch  # noqa: F401  (loads libtorch/libc10, which _C links against)

_C: ModuleType | None
load_error: str | None

try:
    from . import _C  # type: ignore[attr-defined]  # noqa: F401  (registers shallowkern::_* ops)

    load_error = None
except ImportError as exc:  # not built, or built against another torch
    _C = None
    if importlib.util.find_spec("shallowkern._C") is None:
        load_error = "the extension was not built (SHALLOWKERN_NO_EXT=1 or a failed build)"
    else:
        load_error = f"{type(exc).__name__}: {exc}"
    _message = ("shallowkern._C is not available, so the C++/CUDA kernels are disabled and ops "
                f"use Triton or the PyTorch reference ({load_error}). Build it with "
                "`pip install --no-build-isolation -e .`.")
    if importlib.util.find_spec("shallowkern._C") is None:
        # A pure-Python install (SHALLOWKERN_NO_EXT=1) is a supported choice, not a fault: say
        # so at debug level (``shallowkern.ops.explain`` names it per call) instead of warning
        # at every import.
        logging.getLogger("shallowkern").debug(_message)
    else:  # built but unloadable (another torch, a missing library): a native kernel was wanted
        warnings.warn(_message, RuntimeWarning, stacklevel=2)


def available() -> bool:
    """True when the native extension is loaded."""
    return _C is not None


def has_cuda_kernels() -> bool:
    """True when the extension was built with its CUDA kernels (a CUDA torch and nvcc)."""
    return _C is not None and bool(getattr(_C, "with_cuda", False))


def empty_cpu_cache() -> int:
    """Return the C++ kernels' cached large CPU output blocks to the OS (as
    ``torch.cuda.empty_cache`` does for CUDA); returns the bytes released.

    Large CPU outputs of the C++ kernels (>= 256 KiB, e.g. SpinalLinear's weight gradients;
    transparent huge pages from 2 MiB) are, once freed, kept (up to 1 GiB) for the next request
    of the same size, so a training step's gradients reuse pages already faulted in
    (``SHALLOWKERN_CPU_HUGE_PAGES=0`` turns both off)."""
    if _C is None or not hasattr(_C, "large_cache_bytes"):
        return 0
    held = int(_C.large_cache_bytes())
    _C.empty_large_cache()
    return held
