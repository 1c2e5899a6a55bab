"""FitNet: hints for thin deep nets (Romero et al. ICLR 2015), as mdistiller's FITNET.

loss_ce = LOSS.CE_WEIGHT * CE; loss_feat = LOSS.FEAT_WEIGHT * MSE(conv_reg(student hint), teacher hint),
the hint being feats["feats"][HINT_LAYER] of each model and `conv_reg` mdistiller's ConvReg (its
state-dict keys too). The shapes are probed once at construction with a zero batch of
FITNET.INPUT_SIZE (empty, the default: the dataset's training size, from the dataset facts) in
eval mode (mdistiller probes in train mode with random data, which also moves the student's
BatchNorm running statistics; kdlab leaves them untouched).
mdistiller names the hint loss "loss_kd"; kdlab calls it "loss_feat".
"""

from __future__ import annotations

from kdlab.distillers.base import Distiller, cross_entropy
from kdlab.distillers.build import DISTILLERS
from kdlab.distillers.connectors import ConvReg, feature_shapes, pick_layer, probe_size
from kdlab.distillers.losses import feature_mse_loss
from kdlab.errors import ConfigError


@DISTILLERS.register("FITNET")
class FitNet(Distiller):
    paper = "Romero et al., ICLR 2015"
    group = "FITNET"
    dataset_facts = ("input_size",)  # shapes are probed at the training size unless FITNET.INPUT_SIZE is set

    def __init__(self, student, teacher, hint_layer: int, input_size, ce_weight: float, feat_weight: float):
        super().__init__(student, teacher)
        self.hint_layer, self.ce_weight, self.feat_weight = hint_layer, ce_weight, feat_weight
        key = "FITNET.HINT_LAYER"
        s_shape = pick_layer(feature_shapes(student, input_size), hint_layer, key, f"student at input {input_size}")
        t_shape = pick_layer(feature_shapes(teacher, input_size), hint_layer, key, f"teacher at input {input_size}")
        try:
            self.conv_reg = ConvReg(s_shape, t_shape)
        except ConfigError as exc:
            raise ConfigError(f"{key} {hint_layer}: {exc}") from None

    @classmethod
    def needed_facts(cls, cfg):
        return () if cfg.FITNET.INPUT_SIZE else cls.dataset_facts

    @classmethod
    def from_config(cls, cfg, student, teacher, facts):
        return cls(
            student,
            teacher,
            hint_layer=cfg.FITNET.HINT_LAYER,
            input_size=probe_size("FITNET.INPUT_SIZE", cfg.FITNET.INPUT_SIZE, facts),
            ce_weight=cfg.FITNET.LOSS.CE_WEIGHT,
            feat_weight=cfg.FITNET.LOSS.FEAT_WEIGHT,
        )

    def forward_train(self, image, target, **extras):
        logits_student, feats_student = self.student(image)
        _, feats_teacher = self.teacher_forward(image)
        hint = self.conv_reg(feats_student["feats"][self.hint_layer])
        target_feat = feats_teacher["feats"][self.hint_layer]
        if hint.shape != target_feat.shape:
            raise ConfigError(
                f"FITNET: the connector maps to {tuple(hint.shape[1:])} but the teacher's hint is "
                f"{tuple(target_feat.shape[1:])}; FITNET.INPUT_SIZE must be the training input size "
                "(leave it empty to use the dataset's)"
            )
        return logits_student, {
            "loss_ce": self.ce_weight * cross_entropy(logits_student, target),
            "loss_feat": self.feat_weight * feature_mse_loss(hint, target_feat),
        }
