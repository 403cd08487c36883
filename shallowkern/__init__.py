"""shallowkern: Triton, CUDA and C++ kernels for wide, shallow networks."""

from . import _ext, ops
from .ops import last_backend, use_backend

__version__ = "0.1.0"
__all__ = ["ops", "last_backend", "use_backend", "__version__"]
