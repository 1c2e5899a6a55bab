"""The distiller registry and build_distiller()."""

from __future__ import annotations

import torch.nn as nn
from yacs.config import CfgNode

from kdlab.errors import ConfigError, UnknownNameError
from kdlab.registry import Registry

DISTILLERS = Registry("distiller")

# mdistiller / logit-standardization-KD names that kdlab reads as another registered method.
ALIASES = {"KD_ours": "MLKD"}
# Methods of the reference code that configs may name but kdlab does not implement yet.
NOT_YET_IMPLEMENTED = ("AT", "CRD", "DKD_aug", "KDSVD", "NST", "OFD", "PKT", "REVIEWKD", "RKD", "SP", "VID", "Sonly")


def resolve_method(name: str) -> str:
    return ALIASES.get(name, name)


def known_methods() -> list[str]:
    return sorted(set(DISTILLERS.names()) | set(ALIASES) | set(NOT_YET_IMPLEMENTED))


def get_distiller_class(name: str) -> type:
    name = resolve_method(name)
    if name not in DISTILLERS and name in NOT_YET_IMPLEMENTED:
        raise UnknownNameError(
            f"DISTILLER.TYPE {name!r} is a method of mdistiller that kdlab does not implement yet "
            f"(implemented: {', '.join(DISTILLERS.names())})"
        )
    return DISTILLERS.get(name)


def build_distiller(cfg: CfgNode, student: nn.Module, teacher: nn.Module | None = None) -> nn.Module:
    """Build the configured method around student (and teacher unless DISTILLER.TYPE is NONE)."""
    cls = get_distiller_class(cfg.DISTILLER.TYPE)
    if cfg.EXPERIMENT.LOGIT_STAND and not cls.supports_logit_stand:
        raise ConfigError(
            f"EXPERIMENT.LOGIT_STAND is on but DISTILLER.TYPE {cfg.DISTILLER.TYPE!r} does not use it"
        )
    return cls.from_config(cfg, student, teacher)
