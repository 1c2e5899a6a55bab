"""PKT: probabilistic knowledge transfer (Passalis & Tefas ECCV 2018), as mdistiller's PKT.

loss_ce = PKT.LOSS.CE_WEIGHT * CE; loss_feat = PKT.LOSS.FEAT_WEIGHT * pkt_loss(student, teacher) on
feats["pooled_feat"] of each model (the pooled vector before the classifier; the widths may differ,
only each model's B x B cosine similarities are compared). No extra trainable modules.
mdistiller names the feature term "loss_kd"; kdlab calls it "loss_feat".
"""

from __future__ import annotations

from kdlab.distillers.base import FeatureDistiller
from kdlab.distillers.build import DISTILLERS
from kdlab.distillers.feature_losses import pkt_loss


@DISTILLERS.register("PKT")
class PKT(FeatureDistiller):
    group = "PKT"
    paper = "Passalis & Tefas, ECCV 2018"

    def feature_loss(self, feats_student, feats_teacher):
        return pkt_loss(feats_student["pooled_feat"], feats_teacher["pooled_feat"])
