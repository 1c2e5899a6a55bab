"""RKD: relational knowledge distillation (Park et al. CVPR 2019), distance + angle, as mdistiller's RKD.

loss_ce = RKD.LOSS.CE_WEIGHT * CE;
loss_feat = RKD.LOSS.FEAT_WEIGHT * (RKD.DISTANCE_WEIGHT * RKD-D + RKD.ANGLE_WEIGHT * RKD-A) on
feats["pooled_feat"] of each model; pairwise distances are clamped at RKD.PDIST.EPSILON before the
square root (squared distances if RKD.PDIST.SQUARED). The angle term compares B^3 cosines, so its
memory grows as B^2 x feature width. No extra trainable modules.
mdistiller names the feature term "loss_kd"; kdlab calls it "loss_feat".
"""

from __future__ import annotations

from kdlab.distillers.base import FeatureDistiller
from kdlab.distillers.build import DISTILLERS
from kdlab.distillers.feature_losses import rkd_loss


@DISTILLERS.register("RKD")
class RKD(FeatureDistiller):
    group = "RKD"
    paper = "Park et al., CVPR 2019"

    def __init__(
        self,
        student,
        teacher,
        ce_weight: float,
        feat_weight: float,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        eps: float = 1e-12,
        squared: bool = False,
    ):
        super().__init__(student, teacher, ce_weight, feat_weight)
        self.distance_weight, self.angle_weight = distance_weight, angle_weight
        self.eps, self.squared = eps, squared

    @classmethod
    def options(cls, node):
        return dict(distance_weight=node.DISTANCE_WEIGHT, angle_weight=node.ANGLE_WEIGHT,
                    eps=node.PDIST.EPSILON, squared=node.PDIST.SQUARED)

    def feature_loss(self, feats_student, feats_teacher):
        return rkd_loss(feats_student["pooled_feat"], feats_teacher["pooled_feat"], self.squared, self.eps,
                        self.distance_weight, self.angle_weight)
