"""From a frozen config to the objects a run needs: data, student, teacher, distiller, device.

What a method needs (two views, a teacher, segmentation support, dataset facts) is asked of its
Distiller class; nothing here names a method.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import torch
import torch.nn as nn
from yacs.config import CfgNode

from kdlab.data import DatasetSplits, build_dataloaders, build_datasets
from kdlab.distillers import DISTILLERS, build_distiller, dataset_facts, get_distiller_class
from kdlab.errors import ConfigError, TeacherCheckpointNotFound
from kdlab.evaluation import evaluate_model
from kdlab.models import build_model, load_weights, resolve_model_name
from kdlab.models.checkpoint import extract_state_dict, safe_torch_load
from kdlab.models.heads import configure_classifier

log = logging.getLogger("kdlab")

CIFAR_TEACHER_DIR = os.path.join("download_ckpts", "cifar_teachers")
# mdistiller's tiny_imagenet_model_dict: its one Tiny-ImageNet teacher file.
TINY_IMAGENET_TEACHERS = {
    "ResNet18": os.path.join("download_ckpts", "tiny_imagenet_teachers", "ResNet18_vanilla", "ti_res18")
}


def select_device(cfg: CfgNode, local_rank: int | None = None) -> torch.device:
    """SOLVER.DEVICE: auto -> cuda (this rank's GPU) when available, else cpu."""
    name = cfg.SOLVER.DEVICE
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"SOLVER.DEVICE {cfg.SOLVER.DEVICE!r}: CUDA is not available here; use cpu or auto")
        if name == "cuda" and local_rank is not None:
            name = f"cuda:{local_rank}"
    return torch.device(name)


def model_kwargs(cfg: CfgNode, splits: DatasetSplits, teacher: bool = False) -> dict:
    """Builder kwargs: DISTILLER.MODEL_KWARGS (student) or TEACHER_KWARGS, lower-cased, plus in_channels if not 3."""
    node = cfg.DISTILLER.TEACHER_KWARGS if teacher else cfg.DISTILLER.MODEL_KWARGS
    kwargs = {k.lower(): v for k, v in node.items()}
    if not kwargs.get("dropout"):
        kwargs.pop("dropout", None)
    if splits.in_channels != 3:
        kwargs.setdefault("in_channels", splits.in_channels)
    return kwargs


def default_teacher_ckpt(cfg: CfgNode) -> str:
    if cfg.DATASET.TYPE == "tiny_imagenet" and cfg.DISTILLER.TEACHER in TINY_IMAGENET_TEACHERS:
        return TINY_IMAGENET_TEACHERS[cfg.DISTILLER.TEACHER]
    return os.path.join(CIFAR_TEACHER_DIR, f"{cfg.DISTILLER.TEACHER}_vanilla", "ckpt_epoch_240.pth")


def resolved_model_name(cfg: CfgNode, role: str) -> str:
    """The kdlab model DISTILLER.<role> names on this dataset (logged when a reference name maps to another)."""
    given = cfg.DISTILLER[role]
    name = resolve_model_name(given, cfg.DATASET.TYPE)
    if name != given:
        log.info("DISTILLER.%s %s on %s builds kdlab's %s", role, given, cfg.DATASET.TYPE, name)
    return name


def build_student(cfg: CfgNode, splits: DatasetSplits) -> nn.Module:
    name = resolved_model_name(cfg, "STUDENT")
    model = build_model(name, splits.num_classes, pretrained=cfg.DISTILLER.STUDENT_PRETRAINED or None,
                        **model_kwargs(cfg, splits))
    return configure_classifier(model, cfg.CLASSIFIER, splits.num_classes)


def build_teacher(cfg: CfgNode, splits: DatasetSplits, load_teacher_weights: bool = True) -> nn.Module:
    """Build the teacher and load its weights (TEACHER_CKPT, else TEACHER_PRETRAINED, else the default file).

    load_teacher_weights=False keeps the random initialization (benchmarks need no checkpoint).
    """
    name = resolved_model_name(cfg, "TEACHER")
    kwargs = model_kwargs(cfg, splits, teacher=True)
    if not load_teacher_weights:
        return build_model(name, splits.num_classes, **kwargs)
    ckpt = cfg.DISTILLER.TEACHER_CKPT
    if not ckpt and cfg.DISTILLER.TEACHER_PRETRAINED:
        teacher = build_model(name, splits.num_classes, pretrained=cfg.DISTILLER.TEACHER_PRETRAINED, **kwargs)
        if getattr(teacher, "kdlab_new_head", None):
            log.warning(
                "DISTILLER.TEACHER_PRETRAINED %s has %d classes, %s has %d: the teacher's classifier is new and "
                "untrained (its logits carry no knowledge). Fine-tune the teacher first (DISTILLER.TYPE NONE, "
                "DISTILLER.STUDENT %s, DISTILLER.STUDENT_PRETRAINED %s) and pass its student_best as "
                "DISTILLER.TEACHER_CKPT", cfg.DISTILLER.TEACHER_PRETRAINED, teacher.kdlab_new_head,
                cfg.DATASET.TYPE, splits.num_classes, cfg.DISTILLER.TEACHER, cfg.DISTILLER.TEACHER_PRETRAINED)
        return teacher
    if not ckpt and cfg.DATASET.TYPE == "imagenet":
        return build_model(name, splits.num_classes, pretrained="IMAGENET1K_V1", **kwargs)
    ckpt = ckpt or default_teacher_ckpt(cfg)
    if not os.path.isfile(ckpt):
        raise TeacherCheckpointNotFound(
            f"teacher checkpoint not found: {ckpt}; train a teacher (DISTILLER.TYPE NONE) or place "
            "mdistiller's file there (see download_ckpts/README.md), or set DISTILLER.TEACHER_CKPT PATH"
        )
    teacher = build_model(name, splits.num_classes, **kwargs)
    load_weights(teacher, ckpt, what="teacher checkpoint")
    log.info("teacher %s loaded from %s", name, ckpt)
    return teacher


def build_splits(cfg: CfgNode) -> DatasetSplits:
    """The configured dataset, with (weak, strong) training views when the method's class asks for two views."""
    return build_datasets(cfg, two_views=get_distiller_class(cfg.DISTILLER.TYPE).two_views)


def build_everything(cfg: CfgNode, splits: DatasetSplits | None = None, load_teacher_weights: bool = True):
    """Return (splits, distiller); the teacher is frozen and loaded (random weights if not load_teacher_weights)."""
    cls = get_distiller_class(cfg.DISTILLER.TYPE)
    if splits is None:
        splits = build_splits(cfg)
    if splits.task == "segmentation" and not cls.supports_segmentation:
        able = [n for n in DISTILLERS.names() if DISTILLERS.get(n).supports_segmentation]
        raise ConfigError(
            f"DISTILLER.TYPE {cfg.DISTILLER.TYPE!r} is a classification method; for segmentation "
            f"({cfg.DATASET.TYPE}) use one of {', '.join(able)}"
        )
    torch.manual_seed(cfg.EXPERIMENT.SEED)  # model initialization
    student = build_student(cfg, splits)
    teacher = build_teacher(cfg, splits, load_teacher_weights) if cls.needs_teacher else None
    return splits, build_distiller(cfg, student, teacher, facts=dataset_facts(splits))


def saved_classifier(obj) -> dict | None:
    """The CLASSIFIER head (HIDDEN / BATCHNORM / DROPOUT) a kdlab checkpoint's student was built with, if any:
    a student file's "classifier" entry, or the CLASSIFIER group of a full checkpoint's config."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("classifier"), dict):
        return obj["classifier"]
    if isinstance(obj.get("config"), str):
        import yaml

        try:
            group = (yaml.safe_load(obj["config"]) or {}).get("CLASSIFIER")
        except yaml.YAMLError:
            return None
        return group if isinstance(group, dict) else None
    return None


def with_saved_classifier(cfg: CfgNode, obj) -> CfgNode:
    """cfg with a loaded checkpoint's MLP classifier head when cfg names none (tools/eval.py -m MODEL -c CKPT)."""
    if list(cfg.CLASSIFIER.HIDDEN):
        return cfg
    head = saved_classifier(obj)
    if not head or not head.get("HIDDEN"):
        return cfg
    out = cfg.clone()
    out.defrost()
    out.CLASSIFIER.HIDDEN = [int(w) for w in head["HIDDEN"]]
    out.CLASSIFIER.BATCHNORM = bool(head.get("BATCHNORM", False))
    out.CLASSIFIER.DROPOUT = float(head.get("DROPOUT", 0.0))
    out.freeze()
    return out


def evaluate_checkpoint(cfg: CfgNode, ckpt: str) -> dict:
    """DISTILLER.STUDENT loaded from ckpt, scored by kdlab.evaluation on the test split (for tools/eval.py)."""
    splits = build_datasets(cfg, two_views=False)
    if splits.test is not None:  # DATASET.VAL_SPLIT: score the test split, not the held-out training images
        splits = dataclasses.replace(splits, val=splits.test, test=None)
    device = select_device(cfg)
    obj = safe_torch_load(ckpt, "checkpoint")  # read once: the weights, and the classifier head they need
    model = build_student(with_saved_classifier(cfg, obj), splits)
    load_weights(model, extract_state_dict(obj, f"checkpoint {ckpt}"), what=f"checkpoint {ckpt}")
    _, val_loader, _ = build_dataloaders(cfg, two_views=False, splits=splits)
    report = evaluate_model(model, val_loader, device, splits)
    report["model"] = cfg.DISTILLER.STUDENT
    report["dataset"] = cfg.DATASET.TYPE
    return report
