"""Segmentation report: mIoU, pixel accuracy and per-class IoU from a confusion matrix over the test split."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Optional

import torch

from kdlab.constants import IGNORE_INDEX
from kdlab.evaluation.metrics import evaluate_segmentation


def segmentation_report(
    model: Callable[[torch.Tensor], torch.Tensor],
    loader,
    device: torch.device,
    num_classes: int,
    class_names: Optional[list[str]] = None,
    batch_transform: Optional[Callable] = None,
) -> dict:
    """Evaluate a per-pixel model; IoU values in percent, None for a class absent from targets and predictions."""
    out = evaluate_segmentation(model, loader, device, num_classes, batch_transform=batch_transform, collect=True)
    names = class_names or [str(i) for i in range(num_classes)]
    per_class = {
        names[i]: None if math.isnan(v) else 100.0 * v for i, v in enumerate(out["per_class_iou"].tolist())
    }
    return {
        "task": "segmentation",
        "miou": out["test_acc"],
        "pixel_acc": out["test_pixel_acc"],
        "loss": out["test_loss"],
        "num_samples": out["num_samples"],
        "num_pixels": out["num_pixels"],
        "per_class_iou": per_class,
        "confusion_matrix": out["confusion"].tolist(),
        "class_names": names,
        "ignore_index": IGNORE_INDEX,
    }


@torch.no_grad()
def segmentation_samples(
    models: dict, dataset, device: torch.device, count: int, batch_transform: Optional[Callable] = None
) -> list[dict]:
    """The first `count` items of `dataset` ((image, mask, index) items) with each model's predicted mask:
    [{"index", "image" (C x H x W, as the models see it), "target" (H x W), "predictions": {name: H x W}}].
    Each model returns (logits, feats) and is put in eval mode on `device`."""
    items = [dataset[i] for i in range(min(count, len(dataset)))]
    if not items:
        return []
    images = torch.stack([torch.as_tensor(item[0]) for item in items]).to(device)
    if batch_transform is not None:
        images = batch_transform(images)
    predictions = {}
    for name, model in models.items():
        model.to(device).eval()
        predictions[name] = model(images)[0].argmax(1).cpu()
    return [
        {"index": int(item[2]), "image": images[k].float().cpu().numpy(), "target": torch.as_tensor(item[1]).numpy(),
         "predictions": {name: pred[k].numpy() for name, pred in predictions.items()}}
        for k, item in enumerate(items)
    ]


def format_segmentation_report(report: dict) -> str:
    """Human-readable text: headline (mIoU, pixel accuracy, loss) and the per-class IoU table."""
    lines = [
        f"images: {report['num_samples']}   labelled pixels: {report['num_pixels']} "
        f"(label {report['ignore_index']} ignored)",
        f"mIoU: {report['miou']:.2f} %   pixel accuracy: {report['pixel_acc']:.2f} %   loss: {report['loss']:.4f}",
        "",
        "per-class IoU:",
    ]
    width = max(len(n) for n in report["class_names"])
    for name, iou in report["per_class_iou"].items():
        lines.append(f"  {name:<{width}}  {'n/a' if iou is None else f'{iou:6.2f} %'}")
    return "\n".join(lines)
