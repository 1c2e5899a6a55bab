"""SP: similarity-preserving distillation (Tung & Mori ICCV 2019), as mdistiller's SP.

loss_ce = SP.LOSS.CE_WEIGHT * CE;
loss_feat = SP.LOSS.FEAT_WEIGHT * feature_losses.sp_loss(student's last stage output, teacher's) on
feats["feats"][-1]: the squared difference of the row-normalized B x B similarity (Gram) matrices of
the flattened maps, summed and divided by B^2. No extra parameters; the two maps may differ in
channels and size. mdistiller returns the term as a 1-element tensor; kdlab's is a scalar of the
same value. mdistiller names the feature term "loss_kd"; kdlab calls it "loss_feat".
"""

from __future__ import annotations

from kdlab.distillers.base import FeatureDistiller
from kdlab.distillers.build import DISTILLERS
from kdlab.distillers.feature_losses import sp_loss


@DISTILLERS.register("SP")
class SP(FeatureDistiller):
    group = "SP"
    paper = "Tung & Mori, ICCV 2019"

    def feature_loss(self, feats_student, feats_teacher):
        return sp_loss(feats_student["feats"][-1], feats_teacher["feats"][-1])
