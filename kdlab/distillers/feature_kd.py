"""FEATKD: cross-entropy + logit KD + feature regression on chosen layer pairs, in one objective.

    loss_ce   = CE_WEIGHT * CE(student, target)
    loss_kd   = ALPHA * KD(student, teacher, TEMPERATURE)        (z-scored logits with EXPERIMENT.LOGIT_STAND)
    loss_feat = BETA * sum over pairs i of w_i * L_i(connector_i(student feats[S_i]), teacher feats[T_i])

S = FEATKD.STUDENT_LAYERS and T = FEATKD.TEACHER_LAYERS pick the features: an int indexes feats["feats"]
(0 = stem, then each stage), a name picks that entry of the feats dict ("pooled_feat": the vector fed to the
classifier). A pair is two maps or two vectors. L_i is FEATKD.PAIR_LOSSES[i] (one entry: every pair): "mse" or
"cosine" (1 - cos over channels, averaged over the batch and positions). w_i is FEATKD.PAIR_WEIGHTS[i]; empty:
1 / number of pairs, so that loss_feat is BETA times the mean over pairs.

A map connector is, with FEATKD.CONNECTOR "conv_bn", a 1x1 conv + BatchNorm to the teacher's channels followed
by adaptive average pooling (student map larger) or bilinear upsampling (smaller) to the teacher's H x W; with
"conv", a 1x1 conv with bias and no BatchNorm (none when the channels agree) and a bilinear resize either way,
as the Elec475 VOC seed's align layers. A vector connector is a Linear layer (none when the sizes agree).
Shapes are probed at construction with a zero batch of FEATKD.INPUT_SIZE (empty: the dataset's size); a pair
that cannot be connected is a ConfigError naming the layers and shapes. On segmentation the KD term covers
FEATKD.PIXELS: "labelled" pixels (the mean) or "all" (the sum over pixels divided by the batch size, the
seed's KLDivLoss batchmean).
--logit-stand sets TEMPERATURE = --base-temp and ALPHA = --kd-weight, as for KD.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

from kdlab.distillers.base import Distiller, cross_entropy
from kdlab.distillers.build import DISTILLERS
from kdlab.distillers.connectors import (
    FeatureConnector,
    VectorConnector,
    check_connectable,
    pick_feature,
    probe_features,
    probe_size,
)
from kdlab.distillers.losses import FEATURE_LOSSES, PIXEL_MODES, kd_loss_any
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
        student_layers: Sequence[int | str],
        teacher_layers: Sequence[int | str],
        input_size: Sequence[int],
        ce_weight: float,
        alpha: float,
        beta: float,
        temperature: float,
        logit_stand: bool = False,
        pair_losses: Sequence[str] = ("mse",),
        pair_weights: Sequence[float] = (),
        connector: str = "conv_bn",
        pixels: str = "labelled",
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
        self.pair_losses = per_pair("FEATKD.PAIR_LOSSES", list(pair_losses), len(self.student_layers))
        self.pair_weights = pair_weight_list(list(pair_weights), len(self.student_layers))
        check_choices(self.pair_losses, connector, pixels)
        s_feats = probe_features(student, input_size)
        t_feats = probe_features(teacher, input_size)
        at = f"at input {tuple(input_size)}"
        connectors = []
        for s, t in zip(self.student_layers, self.teacher_layers):
            s_shape = pick_feature(s_feats, s, "FEATKD.STUDENT_LAYERS", f"student {at}").shape
            t_shape = pick_feature(t_feats, t, "FEATKD.TEACHER_LAYERS", f"teacher {at}").shape
            where = f"FEATKD layer pair (student {s}, teacher {t})"
            connectors.append(make_connector(s_shape, t_shape, connector, where))
        self.connectors = nn.ModuleList(connectors)
        self.pixels = pixels

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
            pair_losses=c.PAIR_LOSSES,
            pair_weights=c.PAIR_WEIGHTS,
            connector=c.CONNECTOR,
            pixels=c.PIXELS,
        )

    def forward_train(self, image, target, **extras):
        logits_student, feats_student = self.student(image)
        logits_teacher, feats_teacher = self.teacher_forward(image)
        terms = []
        for connector, s, t, name in zip(self.connectors, self.student_layers, self.teacher_layers, self.pair_losses):
            target_feat = pick_feature(feats_teacher, t, "FEATKD.TEACHER_LAYERS", "teacher")
            student_feat = connector(pick_feature(feats_student, s, "FEATKD.STUDENT_LAYERS", "student"),
                                     target_feat.shape[-2:])
            terms.append(FEATURE_LOSSES[name](student_feat, target_feat))
        if self.pair_weights is None:  # the mean over pairs
            loss_feat = sum(terms) / len(terms)
        else:
            loss_feat = sum(w * term for w, term in zip(self.pair_weights, terms))
        return logits_student, {
            "loss_ce": self.ce_weight * cross_entropy(logits_student, target),
            "loss_kd": self.alpha * kd_loss_any(
                logits_student, logits_teacher, target, self.temperature, self.logit_stand, pixels=self.pixels
            ),
            "loss_feat": self.beta * loss_feat,
        }


CONNECTORS = ("conv_bn", "conv")


def per_pair(key: str, values: list, pairs: int) -> list:
    """One value for every pair, or one per pair."""
    if len(values) == 1:
        return values * pairs
    if len(values) != pairs:
        raise ConfigError(f"{key} must have 1 entry or one per layer pair ({pairs}), got {values}")
    return values


def pair_weight_list(weights: list, pairs: int) -> list[float] | None:
    """FEATKD.PAIR_WEIGHTS, one per pair; None when empty (loss_feat = BETA * the mean over pairs)."""
    if not weights:
        return None
    return [float(w) for w in per_pair("FEATKD.PAIR_WEIGHTS", weights, pairs)]


def check_choices(pair_losses: list, connector: str, pixels: str) -> None:
    for key, values, valid in (("FEATKD.PAIR_LOSSES", pair_losses, tuple(FEATURE_LOSSES)),
                               ("FEATKD.CONNECTOR", [connector], CONNECTORS), ("FEATKD.PIXELS", [pixels], PIXEL_MODES)):
        wrong = [v for v in values if v not in valid]
        if wrong:
            raise ConfigError(f"{key}: {wrong[0]!r} is not one of {list(valid)}")


def make_connector(s_shape, t_shape, connector: str, where: str) -> nn.Module:
    """A VectorConnector for two N x D vectors, a FeatureConnector for two maps; a ConfigError for a mix."""
    if len(s_shape) == 2 and len(t_shape) == 2:
        return VectorConnector(s_shape[1], t_shape[1])
    if len(s_shape) != len(t_shape):
        raise ConfigError(
            f"{where}: cannot connect student features {tuple(s_shape[1:])} to teacher features "
            f"{tuple(t_shape[1:])}; pair two C x H x W maps or two vectors"
        )
    check_connectable(s_shape, t_shape, where)
    return FeatureConnector(s_shape[1], t_shape[1], batch_norm=connector == "conv_bn")
