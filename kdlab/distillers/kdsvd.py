"""KDSVD: self-supervised KD with singular value decomposition (Lee et al. ECCV 2018), as mdistiller's KDSVD.

loss_ce = KDSVD.LOSS.CE_WEIGHT * CE; loss_feat = KDSVD.LOSS.FEAT_WEIGHT * kdsvd_loss(student maps,
teacher maps, KDSVD.K) on feats["feats"][1:] (each stage's output, the stem left out), zipped, so
the model with fewer stages decides how many pairs are used (at least two are needed).
Kept from mdistiller on purpose (they change the numbers):
- each N x C x H x W map is decomposed as N matrices of (C*H) x W (a port of the NHWC TensorFlow
  original), so the singular vectors run over the W columns: paired maps must have the same width W
  (student and teacher channels may differ);
- the SVD and everything after it run in float32 even for float64 features (the reference's .float()).
Differs without changing a number: maps are reshaped, not viewed, so channels-last features work
(mdistiller's .view fails on them).
No extra trainable modules. mdistiller names the feature term "loss_kd"; kdlab calls it "loss_feat".
"""

from __future__ import annotations

from kdlab.distillers.base import FeatureDistiller
from kdlab.distillers.build import DISTILLERS
from kdlab.distillers.feature_losses import kdsvd_loss
from kdlab.errors import ConfigError


@DISTILLERS.register("KDSVD")
class KDSVD(FeatureDistiller):
    group = "KDSVD"
    paper = "Lee et al., ECCV 2018"

    def __init__(self, student, teacher, ce_weight: float, feat_weight: float, k: int = 1):
        super().__init__(student, teacher, ce_weight, feat_weight)
        if k < 1:
            raise ConfigError(f"KDSVD.K must be a positive number of singular vectors, got {k}")
        self.k = k

    @classmethod
    def options(cls, node):
        return {"k": node.K}

    def feature_loss(self, feats_student, feats_teacher):
        maps_s, maps_t = feats_student["feats"][1:], feats_teacher["feats"][1:]
        for i, (f_s, f_t) in enumerate(zip(maps_s, maps_t)):
            if f_s.shape[-1] != f_t.shape[-1]:
                raise ConfigError(
                    f"KDSVD pairs feats[{i + 1}] of student and teacher, which must have the same width W "
                    f"(got student {tuple(f_s.shape[1:])}, teacher {tuple(f_t.shape[1:])}); pick models "
                    "whose stages down-sample alike"
                )
        if min(len(maps_s), len(maps_t)) < 2:
            raise ConfigError("KDSVD needs at least two stages in both models (it relates consecutive stages)")
        return kdsvd_loss(maps_s, maps_t, self.k)
