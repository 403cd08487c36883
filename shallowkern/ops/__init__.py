"""Registered ``shallowkern::`` ops: references, fakes, autograd and FLOP formulas."""

from ._backend import Choice, last_backend, use_backend
from .wide_conv2d import wide_conv2d, wide_conv2d_reference

__all__ = ["Choice", "last_backend", "use_backend", "wide_conv2d", "wide_conv2d_reference"]
