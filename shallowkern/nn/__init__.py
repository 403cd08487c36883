"""nn.Module wrappers of the shallowkern ops."""

from .afcc import AFCCConv2d, AFCCLinear
from .fuse import fuse, unfuse
from .quadric_linear import QuadricConv2d, QuadricLinear
from .spinal_linear import SpinalLinear
from .wide_conv2d import WideConv2d

__all__ = ["AFCCConv2d", "AFCCLinear", "QuadricConv2d", "QuadricLinear", "SpinalLinear", "WideConv2d", "fuse", "unfuse"]
