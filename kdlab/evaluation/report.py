"""One model's evaluation report on a test split: classification or segmentation, by the dataset's task."""

from __future__ import annotations

import torch
import torch.nn as nn

from kdlab.evaluation.classification import classification_report
from kdlab.evaluation.segmentation import segmentation_report


def evaluate_model(model: nn.Module, val_loader, device: torch.device, splits) -> dict:
    """Report of a model returning (logits, feats) on val_loader; `splits` is the kdlab.data.DatasetSplits.

    Classification: top-1/top-5, per-class accuracy, confusion matrix. Segmentation (splits.task):
    mIoU, pixel accuracy, per-class IoU, confusion matrix. Also the parameter count and the device.
    """
    model.to(device).eval()
    vt = splits.val_batch_transform
    make_report = segmentation_report if splits.task == "segmentation" else classification_report
    report = make_report(
        lambda x: model(x)[0], val_loader, device, splits.num_classes, splits.class_names,
        batch_transform=(lambda x: vt(x.to(device))) if vt else None,
    )
    report["params"] = sum(p.numel() for p in model.parameters())
    report["device"] = str(device)
    return report
