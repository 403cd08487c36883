"""nn.Module wrappers of the shallowkern ops."""

from .fuse import fuse, unfuse
from .wide_conv2d import WideConv2d

__all__ = ["WideConv2d", "fuse", "unfuse"]
