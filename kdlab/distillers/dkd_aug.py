"""DKD_aug: DKD (Zhao et al. CVPR 2022) on the weak and strong views of MLKD (Jin et al. CVPR 2023).

logit-standardization-KD ships cifar100/dkd/resnet32x4_resnet8x4_aug.yaml (DISTILLER.TYPE DKD_aug,
SOLVER.TRAINER aug) but its code defines neither a DKD_aug distiller nor an "aug" trainer (its
trainer_dict has base, crd and ours), so there is no reference to match. kdlab defines it as the
smallest faithful reading of "DKD with MLKD's two-view augmentation": the views are MLKD's (the
same weak/strong pipeline, student run once per view so each view keeps its own BatchNorm batch
statistics, the eval-mode teacher once on both), and each view is used the way MLKD uses it for its
instance-level terms: the student's logits of a view against the teacher's of the same view.

    loss_ce = DKD.CE_WEIGHT * (CE(student_weak, y) + CE(student_strong, y))
    loss_kd = min(epoch / DKD.WARMUP, 1) * (DKD(student_weak, teacher_weak) + DKD(student_strong, teacher_strong))

with DKD's loss (ALPHA * TCKD + BETA * NCKD at temperature T) on z-scored logits under
EXPERIMENT.LOGIT_STAND. MLKD's other parts (several temperatures, confidence masks, class- and
batch-level terms) are MLKD's own, not augmentation, and are left out. Config: the DKD group;
--logit-stand as DKD's. The weak-view student logits are returned (as MLKD does).
"""

from __future__ import annotations

import torch

from kdlab.distillers.base import cross_entropy
from kdlab.distillers.build import DISTILLERS
from kdlab.distillers.dkd import DKD, _epoch
from kdlab.distillers.losses import dkd_loss


@DISTILLERS.register("DKD_aug")
class DKDAug(DKD):
    paper = "Zhao et al., CVPR 2022, on MLKD's two views (no reference code)"
    group = "DKD"
    two_views = True
    teacher_logits_only = False  # the teacher sees both views

    def forward_train(self, image, target, **extras):
        if not isinstance(image, (tuple, list)) or len(image) != 2:
            raise ValueError("DKD_aug needs two views per batch: image = (weak, strong)")
        weak, strong = image
        students = [self.student(weak)[0], self.student(strong)[0]]
        teacher_logits, _ = self.teacher_forward(torch.cat([weak, strong]))
        teachers = teacher_logits.split([weak.shape[0], strong.shape[0]])
        loss_ce = sum(cross_entropy(s, target) for s in students)
        loss_dkd = sum(
            dkd_loss(s, t, target, self.alpha, self.beta, self.temperature, self.logit_stand)
            for s, t in zip(students, teachers)
        )
        return students[0], {
            "loss_ce": self.ce_weight * loss_ce,
            "loss_kd": self.warmup_factor(_epoch(extras)) * loss_dkd,
        }
