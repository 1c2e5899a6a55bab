"""Classification report: top-1/top-5, per-class accuracy, the confusion matrix and, from it, precision,
recall, F1 and support per class with their macro and weighted averages (scikit-learn's classification_report)."""

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
        "classification_report": precision_recall_report(confusion, names),
    }


def _divide(num: torch.Tensor, den: torch.Tensor, zero_division: float) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp_min(1), torch.full_like(num, zero_division))


def precision_recall_report(confusion, names: list[str], zero_division: float = 0.0) -> dict:
    """Precision, recall, F1 and support per class, accuracy, macro and weighted averages, from a confusion
    matrix (rows true, columns predicted), in the layout and with the numbers of scikit-learn's
    classification_report(y_true, y_pred, labels=range(C), target_names=names, zero_division=zero_division,
    output_dict=True): a ratio whose denominator is 0 (a class never predicted, never present) is zero_division;
    F1 = 2 TP / (support + predicted), as scikit-learn >= 1.3 computes it."""
    cm = torch.as_tensor(confusion, dtype=torch.float64)
    tp, support, predicted = cm.diag(), cm.sum(1), cm.sum(0)
    precision = _divide(tp, predicted, zero_division)
    recall = _divide(tp, support, zero_division)
    f1 = _divide(2 * tp, support + predicted, zero_division)
    out: dict = {
        names[i]: {"precision": precision[i].item(), "recall": recall[i].item(), "f1-score": f1[i].item(),
                   "support": int(support[i].item())}
        for i in range(len(names))
    }
    total = support.sum()
    out["accuracy"] = _divide(tp.sum(), total, zero_division).item()
    stats = torch.stack([precision, recall, f1])
    weighted = (stats * support).sum(1) / total if total > 0 else torch.full((3,), float(zero_division))
    for key, values in (("macro avg", stats.mean(1)), ("weighted avg", weighted)):
        out[key] = dict(zip(("precision", "recall", "f1-score"), values.tolist()), support=int(total.item()))
    return out


def format_precision_recall(report: dict, digits: int = 2) -> str:
    """A precision_recall_report as scikit-learn prints classification_report (the same text)."""
    averages = ("accuracy", "macro avg", "weighted avg")
    names = [n for n in report if n not in averages]
    width = max(max((len(n) for n in names), default=0), len("weighted avg"), digits)
    headers = ("precision", "recall", "f1-score", "support")
    text = ("{:>{width}s} " + " {:>9}" * 4).format("", *headers, width=width) + "\n\n"
    row = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"
    for name in names:
        r = report[name]
        text += row.format(name, *(r[h] for h in headers), width=width, digits=digits)
    support = report["macro avg"]["support"]
    text += "\n" + ("{:>{width}s} " + " {:>9}" * 2 + " {:>9.{digits}f} {:>9}\n").format(
        "accuracy", "", "", report["accuracy"], support, width=width, digits=digits)
    for name in averages[1:]:
        r = report[name]
        text += row.format(name, *(r[h] for h in headers), width=width, digits=digits)
    return text


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
    if report.get("classification_report"):
        lines += ["", "classification report:", format_precision_recall(report["classification_report"]).rstrip("\n")]
    return "\n".join(lines)
