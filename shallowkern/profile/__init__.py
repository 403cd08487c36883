"""FLOPs-per-accuracy profiling: ``profile(model, x)`` -> per-module FLOPs/MACs (dense, effective,
executed), bytes, arithmetic intensity, latency, % of the device roofline and uncounted ops.

Built on ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add; the
``shallowkern::`` ops count through their registered formulas). See ``result`` for the
conventions and ``effective`` for what effective FLOPs leave out.

``import shallowkern.profile as p`` is this package; the package itself can also be called as
the function, ``shallowkern.profile(model, x)`` (what ``shallowkern.profile`` was before it
became lazily imported), which is ``shallowkern.profile.profile(model, x)``.
"""

import sys as _sys
import types as _types

from . import counter, effective, latency, result, roofline, table  # noqa: F401  (eager)
from .counter import EXECUTED_FLOP_REGISTRY, register_executed_flop_formula
from .latency import LatencyStats
from .profiler import profile
from .result import ModuleRow, ProfileResult, Totals
from .roofline import KNOWN_DEVICES, Roofline

__all__ = ["EXECUTED_FLOP_REGISTRY", "KNOWN_DEVICES", "LatencyStats", "ModuleRow",
           "ProfileResult", "Roofline", "Totals", "profile", "register_executed_flop_formula"]


class _CallablePackage(_types.ModuleType):
    """This package, callable as ``profile(...)``."""

    def __call__(self, *args, **kwargs) -> ProfileResult:
        return profile(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallablePackage
