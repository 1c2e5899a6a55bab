"""Evaluate a checkpoint on the configured dataset's test split (used by tools/eval.py).

Classification: top-1/top-5, per-class accuracy, confusion matrix. Segmentation (DatasetSplits.task):
mIoU, pixel accuracy, per-class IoU, confusion matrix.
"""

from __future__ import annotations

from yacs.config import CfgNode

from kdlab.data import build_dataloaders, build_datasets
from kdlab.engine.builder import build_student, select_device
from kdlab.evaluation import classification_report
from kdlab.evaluation.segmentation import segmentation_report
from kdlab.models import load_weights


def evaluate_checkpoint(cfg: CfgNode, ckpt: str) -> dict:
    """Load DISTILLER.STUDENT from ckpt and return its classification or segmentation report (plus model facts)."""
    splits = build_datasets(cfg, two_views=False)
    device = select_device(cfg)
    model = build_student(cfg, splits)
    load_weights(model, ckpt, what="checkpoint")
    model.to(device).eval()
    _, val_loader, _ = build_dataloaders(cfg, two_views=False, splits=splits)
    vt = splits.val_batch_transform
    make_report = segmentation_report if splits.task == "segmentation" else classification_report
    report = make_report(
        lambda x: model(x)[0], val_loader, device, splits.num_classes, splits.class_names,
        batch_transform=(lambda x: vt(x.to(device))) if vt else None,
    )
    report["model"] = cfg.DISTILLER.STUDENT
    report["dataset"] = cfg.DATASET.TYPE
    report["params"] = sum(p.numel() for p in model.parameters())
    report["device"] = str(device)
    return report


__all__ = ["evaluate_checkpoint"]
