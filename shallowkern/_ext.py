"""Loads the compiled extension ``shallowkern._C`` once, or records why it is missing.

Every op works without it (Triton on CUDA, the pure-PyTorch reference everywhere); the native
C++/CUDA kernels are a speed-up, never a requirement. ``import shallowkern`` warns once.
"""

from __future__ import annotations

import importlib.util
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
    warnings.warn(
        "shallowkern._C is not available, so the C++/CUDA kernels are disabled and ops use "
        f"Triton or the PyTorch reference ({load_error}). Build it with "
        "`pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )


def available() -> bool:
    """True when the native extension is loaded."""
    return _C is not None


def has_cuda_kernels() -> bool:
    """True when the extension was built with its CUDA kernels (a CUDA torch and nvcc)."""
    return _C is not None and bool(getattr(_C, "with_cuda", False))
