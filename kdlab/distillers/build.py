"""The distiller registry, build_distiller(), and the method facts kdlab.config validates against."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from yacs.config import CfgNode

from kdlab.config import hooks
from kdlab.distillers.base import DatasetFacts, Distiller
from kdlab.errors import ConfigError
from kdlab.registry import Registry

DISTILLERS = Registry("distiller")

# mdistiller / logit-standardization-KD names that kdlab reads as another registered method.
ALIASES = {"KD_ours": "MLKD"}


def resolve_method(name: str) -> str:
    return ALIASES.get(name, name)


def known_methods() -> list[str]:
    return sorted(set(DISTILLERS.names()) | set(ALIASES))


def get_distiller_class(name: str) -> type[Distiller]:
    name = resolve_method(name)
    return DISTILLERS.get(name)


def find_distiller_class(name: str) -> Optional[type[Distiller]]:
    """The class of DISTILLER.TYPE `name` (aliases resolved), or None if it is unknown or not implemented."""
    name = resolve_method(name)
    return DISTILLERS.get(name) if name in DISTILLERS else None


def dataset_facts(splits) -> DatasetFacts:
    """The DatasetFacts of a kdlab.data.DatasetSplits."""
    return DatasetFacts(
        num_classes=splits.num_classes,
        num_train=len(splits.train),
        train_targets=_targets(splits.train),
        input_size=tuple(splits.input_size),
        in_channels=splits.in_channels,
        task=splits.task,
    )


def _targets(dataset) -> Optional[torch.Tensor]:
    """The class of every training sample (a dataset's `targets`), or None where it has none."""
    targets = getattr(dataset, "targets", None)
    return None if targets is None else torch.as_tensor(targets, dtype=torch.int64)


def configured_dataset_facts(cfg: CfgNode) -> DatasetFacts:
    """The facts of the configured dataset, read by building it (for callers that have no DatasetSplits)."""
    from kdlab.data import build_datasets

    return dataset_facts(build_datasets(cfg, two_views=False))


def build_distiller(
    cfg: CfgNode,
    student: nn.Module,
    teacher: Optional[nn.Module] = None,
    *,
    facts: Optional[DatasetFacts] = None,
) -> Distiller:
    """Build the configured method around student (and teacher if the method needs one).

    `facts` are the dataset's (kdlab.engine.builder passes those of the splits it built). Without
    them, a method that needs facts with this config gets those of the configured dataset, built here.
    """
    cls = get_distiller_class(cfg.DISTILLER.TYPE)
    if cfg.EXPERIMENT.LOGIT_STAND and not cls.supports_logit_stand:
        raise ConfigError(
            f"EXPERIMENT.LOGIT_STAND is on but DISTILLER.TYPE {cfg.DISTILLER.TYPE!r} does not use it"
        )
    needed = cls.needed_facts(cfg)
    if facts is None:
        facts = configured_dataset_facts(cfg) if needed else DatasetFacts()
    missing = [name for name in needed if getattr(facts, name) is None]
    if missing:
        raise ConfigError(
            f"DISTILLER.TYPE {cfg.DISTILLER.TYPE!r} needs the dataset's {', '.join(missing)}; "
            "pass facts=DatasetFacts(...) with them to build_distiller"
        )
    if cls.needs_teacher and teacher is None:
        raise ConfigError(f"DISTILLER.TYPE {cfg.DISTILLER.TYPE!r} needs a teacher model")
    return cls.from_config(cfg, student, teacher, facts)


hooks.register_names("DISTILLER.TYPE", known_methods)
hooks.register_methods(find_distiller_class, DISTILLERS.names)
