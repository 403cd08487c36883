"""nn.Module wrappers of the shallowkern ops."""

from .afcc import AFCCConv2d, AFCCLinear
from .fuse import fuse, unfuse
from .quadric_linear import QuadricConv2d, QuadricLinear
from .multi_delay_linear import MultiDelayLinear
from .rodib import RoDiBHead
from .spinal_linear import SpinalLinear
from .wide_conv2d import WideConv2d

__all__ = ["AFCCConv2d", "AFCCLinear", "MultiDelayLinear", "QuadricConv2d", "QuadricLinear", "RoDiBHead", "SpinalLinear", "WideConv2d", "fuse", "unfuse"]
