"""shallowkern: Triton, CUDA and C++ kernels for wide, shallow networks."""

from . import _ext, ops
from .nn import WideConv2d, fuse
from .ops import last_backend, use_backend
from . import models  # noqa: E402  (models build on nn)

__version__ = "0.1.0"
__all__ = ["WideConv2d", "fuse", "last_backend", "models", "ops", "use_backend", "__version__"]
