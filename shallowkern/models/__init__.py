"""Shallow model families built from shallowkern modules."""

from .shallow import GeneralizedLeNet, GeneralizedVGG16, layer_report

__all__ = ["GeneralizedLeNet", "GeneralizedVGG16", "layer_report"]
