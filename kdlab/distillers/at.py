"""AT: attention transfer (Zagoruyko & Komodakis ICLR 2017), as mdistiller's AT.

loss_ce = AT.LOSS.CE_WEIGHT * CE;
loss_feat = AT.LOSS.FEAT_WEIGHT * sum over the stage outputs feats["feats"][1:] (the stem excluded) of
feature_losses.at_loss(student map, teacher map, AT.P): the mean squared difference of the L2-normalized
channel means of feat**P, the larger map average-pooled to the smaller one's size first.
The stages are paired in order and the extra stages of the deeper model are dropped (zip), as in
mdistiller. No extra parameters; channel counts may differ.
Difference from mdistiller, for non-square maps only: mdistiller compares the heights and pools the
larger map to (H, H) of the smaller; kdlab pools to the smaller map's (H, W) (the same for square maps).
mdistiller names the feature term "loss_kd"; kdlab calls it "loss_feat".
"""

from __future__ import annotations

from kdlab.distillers.base import FeatureDistiller
from kdlab.distillers.build import DISTILLERS
from kdlab.distillers.feature_losses import at_loss


@DISTILLERS.register("AT")
class AT(FeatureDistiller):
    group = "AT"
    paper = "Zagoruyko & Komodakis, ICLR 2017"

    def __init__(self, student, teacher, ce_weight: float, feat_weight: float, p: float = 2):
        super().__init__(student, teacher, ce_weight, feat_weight)
        self.p = p

    @classmethod
    def options(cls, node):
        return {"p": node.P}

    def feature_loss(self, feats_student, feats_teacher):
        pairs = zip(feats_student["feats"][1:], feats_teacher["feats"][1:])
        return sum(at_loss(f_s, f_t, self.p) for f_s, f_t in pairs)
