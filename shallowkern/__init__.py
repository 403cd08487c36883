"""shallowkern: Triton, CUDA and C++ kernels for wide, shallow networks.

Modules: ``WideConv2d`` (+ ``fuse``, ``unfuse``), models (``shallowkern.models``), datasets
(``shallowkern.data``), power laws (``shallowkern.laws``), profiling (``shallowkern.profile``),
sweeps (``shallowkern.sweep``) and the ``shallowkern`` command (``shallowkern.cli``).
"""

from . import _ext, data, laws, models, ops  # noqa: F401  (_ext: loads _C, warns once)
from .nn import SpinalLinear, WideConv2d, fuse, unfuse
from .ops import last_backend, use_backend
from .profile import profile  # noqa: E402  (the function; the package stays importable by path)

__version__ = "0.1.0"
__all__ = ["SpinalLinear", "WideConv2d", "data", "fuse", "last_backend", "laws", "models", "ops", "profile",
           "unfuse", "use_backend", "__version__"]
