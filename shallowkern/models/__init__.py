"""Shallow model families built from shallowkern modules, and the family registry.

``registry`` (``Family``, ``Param``, ``register_family``, ``get_family``, ``families``) is how
sweeps, the CLI, reports and plots learn which families exist; see its docstring to add one.
"""

from .registry import Family, Param, families, get_family, parse_model_spec, register_family
from .quadric import QuadricMLP
from .shallow import GeneralizedLeNet, GeneralizedVGG16, layer_report
from .vgg5 import VGG5, SpinalVGG5, spinal_head
from .vgg11 import VGG11Star

__all__ = ["Family", "GeneralizedLeNet", "GeneralizedVGG16", "Param", "QuadricMLP", "families", "get_family",
           "layer_report", "parse_model_spec", "register_family", "SpinalVGG5", "VGG5", "VGG11Star", "spinal_head"]
