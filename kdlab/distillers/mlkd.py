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

from kdlab.distillers.build import DISTILLERS
from kdlab.distillers.kd import KD
from kdlab.distillers.losses import mlkd_losses


@DISTILLERS.register("MLKD")
class MLKD(KD):
    paper = "Jin et al., CVPR 2023"
    """Same config (KD group) and weights as KD; two views per image and multi-level losses."""

    two_views = True
    teacher_logits_only = False  # the teacher sees both views
    supports_segmentation = False

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
