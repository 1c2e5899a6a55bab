"""NONE: plain cross-entropy training (teachers, and students without KD)."""

from __future__ import annotations

from kdlab.distillers.base import Distiller, cross_entropy
from kdlab.distillers.build import DISTILLERS


@DISTILLERS.register("NONE")
class Vanilla(Distiller):
    paper = "plain cross-entropy training"
    supports_segmentation = True
    needs_teacher = False

    @classmethod
    def from_config(cls, cfg, student, teacher=None, facts=None):
        return cls(student)

    def forward_train(self, image, target, **extras):
        logits, _ = self.student(image)
        return logits, {"loss_ce": cross_entropy(logits, target)}


@DISTILLERS.register("Sonly")
class StudentOnly(Distiller):
    """Sonly: the student on cross-entropy alone, scaled by KD.LOSS.CE_WEIGHT (logit-standardization-KD's baseline).

    The reference (logit-standardization-KD's distillers/Sonly.py) also runs the teacher and computes a KD
    term that it leaves out of the loss; kdlab builds no teacher, which changes nothing the run computes.
    Its gradients are NONE's scaled by KD.LOSS.CE_WEIGHT (0.1 by default); weight decay is not scaled.
    """

    paper = "logit-standardization-KD's student-only baseline"
    group = "KD"
    needs_teacher = False

    def __init__(self, student, ce_weight: float) -> None:
        super().__init__(student)
        self.ce_weight = ce_weight

    @classmethod
    def from_config(cls, cfg, student, teacher=None, facts=None):
        return cls(student, cfg.KD.LOSS.CE_WEIGHT)

    def forward_train(self, image, target, **extras):
        logits, _ = self.student(image)
        return logits, {"loss_ce": self.ce_weight * cross_entropy(logits, target)}
