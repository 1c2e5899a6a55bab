"""Evaluation reports: accuracy, per-class accuracy, confusion matrix (and mIoU for segmentation)."""

from kdlab.evaluation.classification import classification_report, format_report

__all__ = ["classification_report", "format_report"]
