"""shallowkern: Triton, CUDA and C++ kernels for wide, shallow networks.

Modules: ``WideConv2d`` (+ ``fuse``, ``unfuse``), models (``shallowkern.models``), datasets
(``shallowkern.data``), power laws (``shallowkern.laws``), profiling (``shallowkern.profile``),
sweeps (``shallowkern.sweep``) and the ``shallowkern`` command (``shallowkern.cli``).

``import shallowkern`` loads only what registering the ops needs (the extension and the op
modules); the subpackages below are imported on first use, so SciPy (laws), matplotlib (plots)
and the profiler cost nothing until asked for. ``shallowkern.profile`` is the profiling package
and can be called as the function: ``shallowkern.profile(model, x)``.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import _ext, ops  # noqa: F401  (_ext: loads _C; ops: registers the shallowkern:: ops)
from .nn import (AFCCConv2d, AFCCLinear, MultiDelayLinear, QuadricConv2d, QuadricLinear, RoDiBHead,
                 SpinalLinear, WideConv2d, fuse, unfuse)
from ._ext import empty_cpu_cache
from .ops import last_backend, use_backend

__version__ = "0.1.0"
_LAZY = ("afcc", "cli", "data", "laws", "models", "plot", "profile", "reports", "sweep",
         "testing", "train")
__all__ = ["AFCCConv2d", "AFCCLinear", "MultiDelayLinear", "RoDiBHead", "QuadricConv2d", "QuadricLinear", "SpinalLinear", "WideConv2d", "afcc", "data", "empty_cpu_cache", "fuse",
           "last_backend", "laws", "models", "ops", "profile", "unfuse", "use_backend",
           "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
