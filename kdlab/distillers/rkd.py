"""RKD: relational knowledge distillation (Park et al. CVPR 2019), distance + angle, as mdistiller's RKD.

loss_ce = RKD.LOSS.CE_WEIGHT * CE;
loss_feat = RKD.LOSS.FEAT_WEIGHT * (RKD.DISTANCE_WEIGHT * RKD-D + RKD.ANGLE_WEIGHT * RKD-A) on
feats["pooled_feat"] of each model; pairwise distances are clamped at RKD.PDIST.EPSILON before the
square root (squared distances if RKD.PDIST.SQUARED). The angle term compares B^3 cosines, so its
memory grows as B^2 x feature width. No extra trainable modules.
mdistiller names the feature term "loss_kd"; kdlab calls it "loss_feat".
"""

from __future__ import annotations

from kdlab.distillers.base import Distiller, cross_entropy
from kdlab.distillers.build import DISTILLERS
from kdlab.distillers.losses import rkd_loss


@DISTILLERS.register("RKD")
class RKD(Distiller):
    def __init__(
        self,
        student,
        teacher,
        distance_weight: float,
        angle_weight: float,
        ce_weight: float,
        feat_weight: float,
        eps: float,
        squared: bool,
    ):
        super().__init__(student, teacher)
        self.distance_weight, self.angle_weight = distance_weight, angle_weight
        self.ce_weight, self.feat_weight = ce_weight, feat_weight
        self.eps, self.squared = eps, squared

    @classmethod
    def from_config(cls, cfg, student, teacher, facts):
        return cls(
            student,
            teacher,
            distance_weight=cfg.RKD.DISTANCE_WEIGHT,
            angle_weight=cfg.RKD.ANGLE_WEIGHT,
            ce_weight=cfg.RKD.LOSS.CE_WEIGHT,
            feat_weight=cfg.RKD.LOSS.FEAT_WEIGHT,
            eps=cfg.RKD.PDIST.EPSILON,
            squared=cfg.RKD.PDIST.SQUARED,
        )

    def forward_train(self, image, target, **extras):
        logits_student, feats_student = self.student(image)
        _, feats_teacher = self.teacher_forward(image)
        relational = rkd_loss(
            feats_student["pooled_feat"],
            feats_teacher["pooled_feat"],
            self.squared,
            self.eps,
            self.distance_weight,
            self.angle_weight,
        )
        return logits_student, {
            "loss_ce": self.ce_weight * cross_entropy(logits_student, target),
            "loss_feat": self.feat_weight * relational,
        }
