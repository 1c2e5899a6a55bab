"""DKD: Decoupled Knowledge Distillation (Zhao et al. CVPR 2022), with optional logit standardization.

As the logit-standardization-KD repository's DKD distiller: loss_ce = CE_WEIGHT * CE, and
loss_kd = min(epoch / WARMUP, 1) * (ALPHA * TCKD + BETA * NCKD) at temperature T, both KD terms
on z-scored logits when EXPERIMENT.LOGIT_STAND is on (--logit-stand sets T = --base-temp and
multiplies ALPHA and BETA by --kd-weight).
"""

from __future__ import annotations

from kdlab.distillers.base import Distiller, cross_entropy
from kdlab.distillers.build import DISTILLERS
from kdlab.distillers.losses import dkd_loss


@DISTILLERS.register("DKD")
class DKD(Distiller):
    paper = "Zhao et al., CVPR 2022"
    group = "DKD"
    teacher_logits_only = True

    def __init__(
        self,
        student,
        teacher,
        ce_weight: float,
        alpha: float,
        beta: float,
        temperature: float,
        warmup: float,
        logit_stand: bool = False,
    ):
        super().__init__(student, teacher)
        self.ce_weight, self.alpha, self.beta = ce_weight, alpha, beta
        self.temperature, self.warmup, self.logit_stand = temperature, warmup, logit_stand

    @classmethod
    def apply_logit_stand(cls, cfg, base_temp, kd_weight):
        """DKD.T = base_temp; DKD.ALPHA and DKD.BETA are multiplied by kd_weight."""
        cfg.DKD.ALPHA = cfg.DKD.ALPHA * kd_weight
        cfg.DKD.BETA = cfg.DKD.BETA * kd_weight
        cfg.DKD.T = float(base_temp)

    @classmethod
    def from_config(cls, cfg, student, teacher, facts):
        return cls(
            student,
            teacher,
            ce_weight=cfg.DKD.CE_WEIGHT,
            alpha=cfg.DKD.ALPHA,
            beta=cfg.DKD.BETA,
            temperature=cfg.DKD.T,
            warmup=cfg.DKD.WARMUP,
            logit_stand=cfg.EXPERIMENT.LOGIT_STAND,
        )

    def warmup_factor(self, epoch: float) -> float:
        """The linear KD warm-up min(epoch / WARMUP, 1); epochs count from 1, WARMUP 0 means none."""
        return min(epoch / self.warmup, 1.0) if self.warmup > 0 else 1.0

    def forward_train(self, image, target, **extras):
        logits_student, _ = self.student(image)
        logits_teacher = self.teacher_logits_for(image, extras)
        loss_dkd = dkd_loss(
            logits_student, logits_teacher, target, self.alpha, self.beta, self.temperature, self.logit_stand
        )
        return logits_student, {
            "loss_ce": self.ce_weight * cross_entropy(logits_student, target),
            "loss_kd": self.warmup_factor(_epoch(extras)) * loss_dkd,
        }


def _epoch(extras: dict) -> float:
    if extras.get("epoch") is None:
        raise ValueError("DKD.forward_train needs epoch=<1-based epoch> for its KD warm-up")
    return extras["epoch"]
