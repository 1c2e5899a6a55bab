"""AT: attention transfer (Zagoruyko & Komodakis ICLR 2017), as mdistiller's AT.

loss_ce = AT.LOSS.CE_WEIGHT * CE;
loss_feat = AT.LOSS.FEAT_WEIGHT * sum over the stage outputs feats["feats"][1:] (the stem excluded) of
losses.at_loss(student map, teacher map, AT.P): the mean squared difference of the L2-normalized
channel means of feat**P, the larger map average-pooled to the smaller one's size first.
The stages are paired in order and the extra stages of the deeper model are dropped (zip), as in
mdistiller. No extra parameters; channel counts may differ.
Difference from mdistiller, for non-square maps only: mdistiller compares the heights and pools the
larger map to (H, H) of the smaller; kdlab pools to the smaller map's (H, W) (the same for square maps).
mdistiller names the feature term "loss_kd"; kdlab calls it "loss_feat".
"""

from __future__ import annotations

from kdlab.distillers.base import Distiller, cross_entropy
from kdlab.distillers.build import DISTILLERS
from kdlab.distillers.losses import at_loss


@DISTILLERS.register("AT")
class AT(Distiller):
    def __init__(self, student, teacher, p: float, ce_weight: float, feat_weight: float):
        super().__init__(student, teacher)
        self.p, self.ce_weight, self.feat_weight = p, ce_weight, feat_weight

    @classmethod
    def from_config(cls, cfg, student, teacher, facts):
        return cls(
            student, teacher, p=cfg.AT.P, ce_weight=cfg.AT.LOSS.CE_WEIGHT, feat_weight=cfg.AT.LOSS.FEAT_WEIGHT
        )

    def forward_train(self, image, target, **extras):
        logits_student, feats_student = self.student(image)
        _, feats_teacher = self.teacher_forward(image)
        pairs = zip(feats_student["feats"][1:], feats_teacher["feats"][1:])
        return logits_student, {
            "loss_ce": self.ce_weight * cross_entropy(logits_student, target),
            "loss_feat": self.feat_weight * sum(at_loss(f_s, f_t, self.p) for f_s, f_t in pairs),
        }
