"""Registered ``shallowkern::`` ops: references, fakes, autograd, FLOP formulas and dispatch.

``explain(op, *args)`` says which backend the op would run for its arguments;
``last_backend(op)`` what the most recent call ran; ``use_backend(name)`` forces one in a
``with`` block. See ``_backend`` for the declarative dispatch every op uses.
"""

from ._backend import Backend, Choice, OpDispatch, explain, last_backend, use_backend
from .afcc_conv2d import afcc_conv2d, afcc_conv2d_reference
from .quadric_linear import quadric_linear, quadric_linear_reference
from .wide_conv2d import wide_conv2d, wide_conv2d_reference

__all__ = ["Backend", "Choice", "OpDispatch", "afcc_conv2d", "afcc_conv2d_reference", "explain",
           "last_backend", "quadric_linear", "quadric_linear_reference", "use_backend",
           "wide_conv2d", "wide_conv2d_reference"]
