"""NONE: plain cross-entropy training (teachers, and students without KD)."""

from __future__ import annotations

from kdlab.distillers.base import Distiller, cross_entropy
from kdlab.distillers.build import DISTILLERS


@DISTILLERS.register("NONE")
class Vanilla(Distiller):
    supports_segmentation = True
    needs_teacher = False

    @classmethod
    def from_config(cls, cfg, student, teacher=None, facts=None):
        return cls(student)

    def forward_train(self, image, target, **extras):
        logits, _ = self.student(image)
        return logits, {"loss_ce": cross_entropy(logits, target)}
