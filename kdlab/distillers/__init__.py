"""Distillers: one registry, one file per method; losses are pure functions in losses.py."""

from kdlab.distillers import (  # noqa: F401  (register the methods)
    at,
    conkd,
    crd,
    ctkd,
    dkd,
    dkd_aug,
    feature_kd,
    fitnet,
    kd,
    kdsvd,
    lg,
    mlkd,
    nst,
    ofd,
    pkt,
    reviewkd,
    rkd,
    sp,
    supcon,
    vanilla,
    vid,
)
from kdlab.distillers.base import DatasetFacts, Distiller
from kdlab.distillers.build import DISTILLERS, build_distiller, dataset_facts, get_distiller_class, known_methods

__all__ = [
    "DISTILLERS",
    "DatasetFacts",
    "Distiller",
    "build_distiller",
    "dataset_facts",
    "get_distiller_class",
    "known_methods",
]
