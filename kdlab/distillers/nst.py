"""NST: neuron selectivity transfer (Huang & Wang 2017), as mdistiller's NST.

loss_ce = NST.LOSS.CE_WEIGHT * CE;
loss_feat = NST.LOSS.FEAT_WEIGHT * sum over the stage outputs feats["feats"][1:] (the stem excluded) of
feature_losses.nst_loss(student map, teacher map): the squared MMD, polynomial kernel (x.y)^2, between the
two maps' channels, each channel's activations L2-normalized over positions, the larger map
average-pooled to the smaller one's size first. The stages are paired in order and the extra stages
of the deeper model are dropped (zip), as in mdistiller. No extra parameters; channel counts may differ.
Difference from mdistiller, for non-square maps only: mdistiller compares the heights and pools the
larger map to (H, H) of the smaller; kdlab pools to the smaller map's (H, W) (the same for square maps).
mdistiller names the feature term "loss_kd"; kdlab calls it "loss_feat".
"""

from __future__ import annotations

from kdlab.distillers.base import FeatureDistiller
from kdlab.distillers.build import DISTILLERS
from kdlab.distillers.feature_losses import nst_loss


@DISTILLERS.register("NST")
class NST(FeatureDistiller):
    group = "NST"
    paper = "Huang & Wang, arXiv 2017"

    def feature_loss(self, feats_student, feats_teacher):
        pairs = zip(feats_student["feats"][1:], feats_teacher["feats"][1:])
        return sum(nst_loss(f_s, f_t) for f_s, f_t in pairs)
