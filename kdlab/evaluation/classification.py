"""Classification report: top-1/top-5, per-class accuracy and the confusion matrix."""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch

from kdlab.evaluation.metrics import evaluate


def classification_report(
    model: Callable[[torch.Tensor], torch.Tensor],
    loader,
    device: torch.device,
    num_classes: int,
    class_names: Optional[list[str]] = None,
    batch_transform: Optional[Callable] = None,
) -> dict:
    """Evaluate model on loader; per-class accuracy is the confusion matrix's diagonal over row sums."""
    out = evaluate(model, loader, device, num_classes, batch_transform=batch_transform, collect=True)
    confusion = out.pop("confusion")
    support = confusion.sum(1)
    correct = confusion.diag()
    names = class_names or [str(i) for i in range(num_classes)]
    per_class = {
        names[i]: (100.0 * correct[i].item() / support[i].item()) if support[i] > 0 else None
        for i in range(num_classes)
    }
    return {
        "top1": out["test_acc"],
        "top5": out["test_acc_top5"],
        "loss": out["test_loss"],
        "num_samples": out["num_samples"],
        "per_class_acc": per_class,
        "confusion_matrix": confusion.tolist(),
        "class_names": names,
    }


def format_report(report: dict, max_matrix: int = 20) -> str:
    """Human-readable text: headline, per-class table, confusion matrix (if small enough)."""
    lines = [
        f"samples: {report['num_samples']}",
        f"top-1: {report['top1']:.2f} %   top-5: {report['top5']:.2f} %   loss: {report['loss']:.4f}",
        "",
        "per-class accuracy:",
    ]
    width = max(len(n) for n in report["class_names"])
    for name, acc in report["per_class_acc"].items():
        lines.append(f"  {name:<{width}}  {'n/a' if acc is None else f'{acc:6.2f} %'}")
    matrix = report["confusion_matrix"]
    if len(matrix) <= max_matrix:
        lines += ["", "confusion matrix (rows: true class, columns: predicted):"]
        cell = max(3, max(len(str(v)) for row in matrix for v in row))
        for row in matrix:
            lines.append("  " + " ".join(f"{v:>{cell}}" for v in row))
    return "\n".join(lines)
