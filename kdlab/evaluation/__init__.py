"""Evaluation: metrics (accuracy, confusion matrix, mIoU), per-model reports and model facts.

Imports run one way: kdlab.engine uses these metrics; nothing here imports kdlab.engine.
"""

from kdlab.evaluation.classification import classification_report, format_report
from kdlab.evaluation.report import evaluate_model
from kdlab.evaluation.segmentation import format_segmentation_report, segmentation_report

__all__ = [
    "classification_report",
    "evaluate_model",
    "format_report",
    "format_segmentation_report",
    "segmentation_report",
]
