"""PKT: probabilistic knowledge transfer (Passalis & Tefas ECCV 2018), as mdistiller's PKT.

loss_ce = PKT.LOSS.CE_WEIGHT * CE; loss_feat = PKT.LOSS.FEAT_WEIGHT * pkt_loss(student, teacher) on
feats["pooled_feat"] of each model (the pooled vector before the classifier; the widths may differ,
only each model's B x B cosine similarities are compared). No extra trainable modules.
mdistiller names the feature term "loss_kd"; kdlab calls it "loss_feat".
"""

from __future__ import annotations

from kdlab.distillers.base import Distiller, cross_entropy
from kdlab.distillers.build import DISTILLERS
from kdlab.distillers.losses import pkt_loss


@DISTILLERS.register("PKT")
class PKT(Distiller):
    def __init__(self, student, teacher, ce_weight: float, feat_weight: float):
        super().__init__(student, teacher)
        self.ce_weight, self.feat_weight = ce_weight, feat_weight

    @classmethod
    def from_config(cls, cfg, student, teacher, facts):
        return cls(student, teacher, ce_weight=cfg.PKT.LOSS.CE_WEIGHT, feat_weight=cfg.PKT.LOSS.FEAT_WEIGHT)

    def forward_train(self, image, target, **extras):
        logits_student, feats_student = self.student(image)
        _, feats_teacher = self.teacher_forward(image)
        return logits_student, {
            "loss_ce": self.ce_weight * cross_entropy(logits_student, target),
            "loss_feat": self.feat_weight * pkt_loss(feats_student["pooled_feat"], feats_teacher["pooled_feat"]),
        }
