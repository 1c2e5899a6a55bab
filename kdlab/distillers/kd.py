"""KD (Hinton et al. 2015), with optional logit standardization (Sun et al. CVPR 2024).

On segmentation (N x C x H x W logits) the KD term is taken per pixel: with KD.PIXELS "labelled" the mean over
the labelled pixels, with "all" the sum over every pixel divided by the batch size (KLDivLoss batchmean on the
maps, as the Elec475 VOC seed's response KD).
"""

from __future__ import annotations

from kdlab.distillers.base import Distiller, cross_entropy
from kdlab.distillers.build import DISTILLERS
from kdlab.distillers.losses import PIXEL_MODES, kd_loss_any
from kdlab.errors import ConfigError


@DISTILLERS.register("KD")
class KD(Distiller):
    paper = "Hinton et al., NeurIPS workshop 2015"
    group = "KD"
    supports_segmentation = True
    teacher_logits_only = True

    def __init__(
        self, student, teacher, temperature: float, ce_weight: float, kd_weight: float, logit_stand: bool = False,
        pixels: str = "labelled",
    ):
        super().__init__(student, teacher)
        if pixels not in PIXEL_MODES:
            raise ConfigError(f"KD.PIXELS: {pixels!r} is not one of {list(PIXEL_MODES)}")
        self.pixels = pixels
        self.temperature = temperature
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight
        self.logit_stand = logit_stand

    @classmethod
    def apply_logit_stand(cls, cfg, base_temp, kd_weight):
        """KD.TEMPERATURE = base_temp, KD.LOSS.KD_WEIGHT = kd_weight (also MLKD's, which reads the KD group)."""
        cfg.KD.TEMPERATURE = float(base_temp)
        cfg.KD.LOSS.KD_WEIGHT = float(kd_weight)

    @classmethod
    def from_config(cls, cfg, student, teacher, facts):
        return cls(
            student,
            teacher,
            temperature=cfg.KD.TEMPERATURE,
            ce_weight=cfg.KD.LOSS.CE_WEIGHT,
            kd_weight=cfg.KD.LOSS.KD_WEIGHT,
            logit_stand=cfg.EXPERIMENT.LOGIT_STAND,
            pixels=cfg.KD.PIXELS,
        )

    def forward_train(self, image, target, **extras):
        logits_student, _ = self.student(image)
        logits_teacher = self.teacher_logits_for(image, extras)
        return logits_student, {
            "loss_ce": self.ce_weight * cross_entropy(logits_student, target),
            "loss_kd": self.kd_weight
            * kd_loss_any(logits_student, logits_teacher, target, self.temperature, self.logit_stand, self.pixels),
        }
