"""FEATKD: cross-entropy + logit KD + feature regression on chosen layer pairs, in one objective.

    loss_ce   = CE_WEIGHT * CE(student, target)
    loss_kd   = ALPHA * KD(student, teacher, TEMPERATURE)        (z-scored logits with EXPERIMENT.LOGIT_STAND)
    loss_feat = BETA * mean over pairs i of MSE(connector_i(student feats[S_i]), teacher feats[T_i])

S = FEATKD.STUDENT_LAYERS and T = FEATKD.TEACHER_LAYERS index feats["feats"] (0 = stem, then each
stage). Each connector is a 1x1 conv + BatchNorm to the teacher's channels followed by adaptive
average pooling (student map larger) or bilinear upsampling (smaller) to the teacher's H x W.
Shapes are probed at construction with a zero batch of FEATKD.INPUT_SIZE (empty: the dataset's
size); a pair that cannot be connected is a ConfigError naming the layers and shapes.
--logit-stand sets TEMPERATURE = --base-temp and ALPHA = --kd-weight, as for KD.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

from kdlab.distillers.base import Distiller, cross_entropy
from kdlab.distillers.build import DISTILLERS
from kdlab.distillers.connectors import (
    FeatureConnector,
    check_connectable,
    feature_shapes,
    pick_layer,
    probe_size,
)
from kdlab.distillers.losses import feature_mse_loss, kd_loss_any
from kdlab.errors import ConfigError


@DISTILLERS.register("FEATKD")
class FeatureKD(Distiller):
    paper = "kdlab: CE + KD + feature hints on chosen layers"
    group = "FEATKD"
    supports_segmentation = True
    dataset_facts = ("input_size",)  # shapes are probed at the training size unless FEATKD.INPUT_SIZE is set

    def __init__(
        self,
        student,
        teacher,
        student_layers: Sequence[int],
        teacher_layers: Sequence[int],
        input_size: Sequence[int],
        ce_weight: float,
        alpha: float,
        beta: float,
        temperature: float,
        logit_stand: bool = False,
    ):
        super().__init__(student, teacher)
        if len(student_layers) != len(teacher_layers) or not student_layers:
            raise ConfigError(
                "FEATKD.STUDENT_LAYERS and FEATKD.TEACHER_LAYERS must be non-empty lists of equal length, "
                f"got {list(student_layers)} and {list(teacher_layers)}"
            )
        self.student_layers, self.teacher_layers = list(student_layers), list(teacher_layers)
        self.ce_weight, self.alpha, self.beta = ce_weight, alpha, beta
        self.temperature, self.logit_stand = temperature, logit_stand
        s_shapes = feature_shapes(student, input_size)
        t_shapes = feature_shapes(teacher, input_size)
        connectors = []
        for s, t in zip(self.student_layers, self.teacher_layers):
            s_shape = pick_layer(s_shapes, s, "FEATKD.STUDENT_LAYERS", f"student at input {tuple(input_size)}")
            t_shape = pick_layer(t_shapes, t, "FEATKD.TEACHER_LAYERS", f"teacher at input {tuple(input_size)}")
            check_connectable(s_shape, t_shape, f"FEATKD layer pair (student {s}, teacher {t})")
            connectors.append(FeatureConnector(s_shape[1], t_shape[1]))
        self.connectors = nn.ModuleList(connectors)

    @classmethod
    def needed_facts(cls, cfg):
        return () if cfg.FEATKD.INPUT_SIZE else cls.dataset_facts

    @classmethod
    def apply_logit_stand(cls, cfg, base_temp, kd_weight):
        """FEATKD.TEMPERATURE = base_temp, FEATKD.ALPHA (the KD weight) = kd_weight, as for KD."""
        cfg.FEATKD.TEMPERATURE = float(base_temp)
        cfg.FEATKD.ALPHA = float(kd_weight)

    @classmethod
    def from_config(cls, cfg, student, teacher, facts):
        c = cfg.FEATKD
        return cls(
            student,
            teacher,
            student_layers=c.STUDENT_LAYERS,
            teacher_layers=c.TEACHER_LAYERS,
            input_size=probe_size("FEATKD.INPUT_SIZE", c.INPUT_SIZE, facts),
            ce_weight=c.CE_WEIGHT,
            alpha=c.ALPHA,
            beta=c.BETA,
            temperature=c.TEMPERATURE,
            logit_stand=cfg.EXPERIMENT.LOGIT_STAND,
        )

    def forward_train(self, image, target, **extras):
        logits_student, feats_student = self.student(image)
        logits_teacher, feats_teacher = self.teacher_forward(image)
        feat_losses = []
        for connector, s, t in zip(self.connectors, self.student_layers, self.teacher_layers):
            target_feat = feats_teacher["feats"][t]
            feat_losses.append(
                feature_mse_loss(connector(feats_student["feats"][s], target_feat.shape[-2:]), target_feat)
            )
        return logits_student, {
            "loss_ce": self.ce_weight * cross_entropy(logits_student, target),
            "loss_kd": self.alpha
            * kd_loss_any(logits_student, logits_teacher, target, self.temperature, self.logit_stand),
            "loss_feat": self.beta * sum(feat_losses) / len(feat_losses),
        }
