"""Distillers: one registry, one file per method; losses are pure functions in losses.py."""

from kdlab.distillers import conkd, dkd, feature_kd, fitnet, kd, mlkd, vanilla  # noqa: F401  (register the methods)
from kdlab.distillers.base import Distiller
from kdlab.distillers.build import DISTILLERS, build_distiller, get_distiller_class, known_methods

__all__ = ["DISTILLERS", "Distiller", "build_distiller", "get_distiller_class", "known_methods"]
