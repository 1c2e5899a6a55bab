"""CONKD (ConKD-Lion seed): supervised contrastive learning on a projection head + logit-standardized KD.

    loss_ce     = CE_WEIGHT * CE(student, target)
    loss_kd     = KD_WEIGHT * KD(z-scored student, z-scored teacher, TEMPERATURE)   (always standardized)
    loss_supcon = SUPCON_WEIGHT * SupCon(head(student pooled_feat), target, SUPCON_TEMPERATURE, SUPCON_VARIANT)

The head is Linear(d, d) -> ReLU -> Linear(d, PROJ_DIM) on the student's pooled feature (d probed
once at construction), as in Khosla et al. (NeurIPS 2020); its output is L2-normalized inside
supcon_loss. SupCon uses the one training view: positives are the other same-label samples of
the batch (SUPCON_VARIANT khosla), also the anchor itself (seed: the seed README's form), or the batch is
stacked twice as two identical views (two_view: what the seed's notebooks run). The logits are always
standardized; --logit-stand only sets TEMPERATURE = --base-temp and KD_WEIGHT = --kd-weight.
"""

from __future__ import annotations

import torch.nn as nn

from kdlab.distillers.base import Distiller, cross_entropy
from kdlab.distillers.build import DISTILLERS
from kdlab.distillers.connectors import probe_features
from kdlab.distillers.losses import kd_loss, supcon_loss


def projection_head(in_dim: int, out_dim: int) -> nn.Sequential:
    """SupCon's MLP head: Linear(in, in) -> ReLU -> Linear(in, out)."""
    return nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, out_dim))


@DISTILLERS.register("CONKD")
class ConKD(Distiller):
    paper = "SupCon (Khosla et al., NeurIPS 2020) + logit-standardized KD"
    group = "CONKD"
    teacher_logits_only = True  # the teacher gives logits only (the head is on the student's feature)
    dataset_facts = ("input_size",)  # the student is probed once to size the projection head

    def __init__(
        self,
        student,
        teacher,
        feat_dim: int,
        proj_dim: int,
        ce_weight: float,
        kd_weight: float,
        supcon_weight: float,
        temperature: float,
        supcon_temperature: float,
        supcon_variant: str = "khosla",
    ):
        super().__init__(student, teacher)
        self.head = projection_head(feat_dim, proj_dim)
        self.ce_weight, self.kd_weight, self.supcon_weight = ce_weight, kd_weight, supcon_weight
        self.temperature, self.supcon_temperature = temperature, supcon_temperature
        self.supcon_variant = supcon_variant

    @classmethod
    def apply_logit_stand(cls, cfg, base_temp, kd_weight):
        """CONKD.TEMPERATURE = base_temp, CONKD.KD_WEIGHT = kd_weight (the logits are standardized anyway)."""
        cfg.CONKD.TEMPERATURE = float(base_temp)
        cfg.CONKD.KD_WEIGHT = float(kd_weight)

    @classmethod
    def from_config(cls, cfg, student, teacher, facts):
        c = cfg.CONKD
        feat_dim = probe_features(student, facts.input_size)["pooled_feat"].shape[1]
        return cls(
            student,
            teacher,
            feat_dim=feat_dim,
            proj_dim=c.PROJ_DIM,
            ce_weight=c.CE_WEIGHT,
            kd_weight=c.KD_WEIGHT,
            supcon_weight=c.SUPCON_WEIGHT,
            temperature=c.TEMPERATURE,
            supcon_temperature=c.SUPCON_TEMPERATURE,
            supcon_variant=c.SUPCON_VARIANT,
        )

    def forward_train(self, image, target, **extras):
        logits_student, feats_student = self.student(image)
        logits_teacher = self.teacher_logits_for(image, extras)
        embedding = self.head(feats_student["pooled_feat"])
        return logits_student, {
            "loss_ce": self.ce_weight * cross_entropy(logits_student, target),
            "loss_kd": self.kd_weight * kd_loss(logits_student, logits_teacher, self.temperature, logit_stand=True),
            "loss_supcon": self.supcon_weight
            * supcon_loss(embedding, target, self.supcon_temperature, variant=self.supcon_variant),
        }
