"""MLKD: Multi-Level Logit Distillation (Jin et al. CVPR 2023), with optional logit standardization.

Two views per image (weak, strong). As in the logit-standardization-KD repository's MLKD, the
student runs once per view, in two separate forwards, so that in train mode each view's
BatchNorm statistics are its own (one concatenated forward would mix them and change the
numbers). The frozen teacher is in eval mode, where a sample's output does not depend on the
rest of the batch, so it runs once on both views concatenated. The losses (and the reference
quirks they keep) are those of `losses.mlkd_losses`; the weak-view student logits are returned.
--logit-stand sets KD.TEMPERATURE = --base-temp and KD.LOSS.KD_WEIGHT = --kd-weight.
"""

from __future__ import annotations

import torch

from kdlab.distillers.base import Distiller
from kdlab.distillers.build import DISTILLERS
from kdlab.distillers.losses import mlkd_losses


@DISTILLERS.register("MLKD")
class MLKD(Distiller):
    two_views = True
    supports_logit_stand = True

    def __init__(
        self, student, teacher, temperature: float, ce_weight: float, kd_weight: float, logit_stand: bool = False
    ):
        super().__init__(student, teacher)
        self.temperature, self.ce_weight, self.kd_weight = temperature, ce_weight, kd_weight
        self.logit_stand = logit_stand

    @classmethod
    def from_config(cls, cfg, student, teacher):
        return cls(
            student,
            teacher,
            temperature=cfg.KD.TEMPERATURE,
            ce_weight=cfg.KD.LOSS.CE_WEIGHT,
            kd_weight=cfg.KD.LOSS.KD_WEIGHT,
            logit_stand=cfg.EXPERIMENT.LOGIT_STAND,
        )

    def forward_train(self, image, target, **extras):
        if not isinstance(image, (tuple, list)) or len(image) != 2:
            raise ValueError("MLKD needs two views per batch: image = (weak, strong)")
        weak, strong = image
        logits_weak, _ = self.student(weak)
        logits_strong, _ = self.student(strong)
        teacher_logits, _ = self.teacher_forward(torch.cat([weak, strong]))
        teacher_weak, teacher_strong = teacher_logits.split([weak.shape[0], strong.shape[0]])
        losses = mlkd_losses(
            logits_weak,
            logits_strong,
            teacher_weak,
            teacher_strong,
            target,
            self.temperature,
            self.ce_weight,
            self.kd_weight,
            self.logit_stand,
        )
        return logits_weak, losses
