"""NST: neuron selectivity transfer (Huang & Wang 2017), as mdistiller's NST.

loss_ce = NST.LOSS.CE_WEIGHT * CE;
loss_feat = NST.LOSS.FEAT_WEIGHT * sum over the stage outputs feats["feats"][1:] (the stem excluded) of
losses.nst_loss(student map, teacher map): the squared MMD, polynomial kernel (x.y)^2, between the
two maps' channels, each channel's activations L2-normalized over positions, the larger map
average-pooled to the smaller one's size first. The stages are paired in order and the extra stages
of the deeper model are dropped (zip), as in mdistiller. No extra parameters; channel counts may differ.
Difference from mdistiller, for non-square maps only: mdistiller compares the heights and pools the
larger map to (H, H) of the smaller; kdlab pools to the smaller map's (H, W) (the same for square maps).
mdistiller names the feature term "loss_kd"; kdlab calls it "loss_feat".
"""

from __future__ import annotations

from kdlab.distillers.base import Distiller, cross_entropy
from kdlab.distillers.build import DISTILLERS
from kdlab.distillers.losses import nst_loss


@DISTILLERS.register("NST")
class NST(Distiller):
    def __init__(self, student, teacher, ce_weight: float, feat_weight: float):
        super().__init__(student, teacher)
        self.ce_weight, self.feat_weight = ce_weight, feat_weight

    @classmethod
    def from_config(cls, cfg, student, teacher, facts):
        return cls(student, teacher, ce_weight=cfg.NST.LOSS.CE_WEIGHT, feat_weight=cfg.NST.LOSS.FEAT_WEIGHT)

    def forward_train(self, image, target, **extras):
        logits_student, feats_student = self.student(image)
        _, feats_teacher = self.teacher_forward(image)
        pairs = zip(feats_student["feats"][1:], feats_teacher["feats"][1:])
        return logits_student, {
            "loss_ce": self.ce_weight * cross_entropy(logits_student, target),
            "loss_feat": self.feat_weight * sum(nst_loss(f_s, f_t) for f_s, f_t in pairs),
        }
