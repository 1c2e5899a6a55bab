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

KD_ON embeddings is the seed's first student stage: the KD term compares the L2-normalized outputs of the
student's head and of the TEACHER's head (trained with the teacher by DISTILLER.TYPE SUPCON and read from
DISTILLER.TEACHER_CKPT), instead of the two classifiers' logits. No classifier is trained (CE_WEIGHT 0 in the
seed's recipe), so the held-out test_loss is this objective; a classifier-only stage follows (CLASSIFIER keys).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdlab.distillers.base import Distiller, cross_entropy
from kdlab.distillers.build import DISTILLERS
from kdlab.distillers.connectors import probe_features
from kdlab.distillers.losses import kd_loss, supcon_loss
from kdlab.errors import ConfigError
from kdlab.models.checkpoint import load_weights, safe_torch_load


def projection_head(in_dim: int, out_dim: int) -> nn.Sequential:
    """SupCon's MLP head: Linear(in, in) -> ReLU -> Linear(in, out)."""
    return nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, out_dim))


def load_teacher_head(path: str, in_dim: int, out_dim: int) -> nn.Sequential:
    """The projection head saved with a SUPCON (or CONKD) run: "extra" of its student files, "model" of the others."""
    if not path:
        raise ConfigError("CONKD.KD_ON embeddings needs DISTILLER.TEACHER_CKPT: the student_best of the teacher's "
                          "DISTILLER.TYPE SUPCON run, which holds its projection head")
    obj = safe_torch_load(path, "teacher checkpoint")
    found = {}
    for key in ("extra", "model"):
        state = obj.get(key) if isinstance(obj, dict) else None
        if isinstance(state, dict):
            found = found or {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
    if not found:
        raise ConfigError(
            f"DISTILLER.TEACHER_CKPT {path} holds no projection head (no head.* weights), which CONKD.KD_ON "
            "embeddings distils: train the teacher with DISTILLER.TYPE SUPCON (e.g. configs/imagenette/conkd/"
            "resnet101_teacher_stage1_supcon.yaml) and pass its student_best, or set CONKD.KD_ON logits"
        )
    return load_weights(projection_head(in_dim, out_dim), found, what=f"teacher projection head in {path}")


@DISTILLERS.register("CONKD")
class ConKD(Distiller):
    paper = "SupCon (Khosla et al., NeurIPS 2020) + logit-standardized KD"
    group = "CONKD"
    teacher_logits_only = True  # with KD_ON logits the teacher gives logits only (the head is the student's)
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
        teacher_head: nn.Module | None = None,
    ):
        if teacher_head is not None:  # part of the frozen teacher (frozen, eval mode, left out of checkpoints)
            teacher.add_module("kdlab_proj_head", teacher_head)
        super().__init__(student, teacher)
        self.head = projection_head(feat_dim, proj_dim)
        self.ce_weight, self.kd_weight, self.supcon_weight = ce_weight, kd_weight, supcon_weight
        self.temperature, self.supcon_temperature = temperature, supcon_temperature
        self.supcon_variant = supcon_variant
        self.kd_on_embeddings = teacher_head is not None
        self.teacher_logits_only = not self.kd_on_embeddings  # KD_ON embeddings reads the teacher's features
        self.held_out_objective = self.kd_on_embeddings

    @classmethod
    def apply_logit_stand(cls, cfg, base_temp, kd_weight):
        """CONKD.TEMPERATURE = base_temp, CONKD.KD_WEIGHT = kd_weight (the logits are standardized anyway)."""
        cfg.CONKD.TEMPERATURE = float(base_temp)
        cfg.CONKD.KD_WEIGHT = float(kd_weight)

    @classmethod
    def from_config(cls, cfg, student, teacher, facts):
        c = cfg.CONKD
        feat_dim = probe_features(student, facts.input_size)["pooled_feat"].shape[1]
        teacher_head = None
        if c.KD_ON == "embeddings":
            teacher_dim = probe_features(teacher, facts.input_size)["pooled_feat"].shape[1]
            teacher_head = load_teacher_head(cfg.DISTILLER.TEACHER_CKPT, teacher_dim, c.PROJ_DIM)
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
            teacher_head=teacher_head,
        )

    def forward_train(self, image, target, **extras):
        logits_student, feats_student = self.student(image)
        embedding = self.head(feats_student["pooled_feat"])
        if self.kd_on_embeddings:
            with torch.no_grad():
                _, feats_teacher = self.teacher_forward(image)
                kd_teacher = F.normalize(self.teacher.kdlab_proj_head(feats_teacher["pooled_feat"]), dim=1)
            kd_student = F.normalize(embedding, dim=1)
        else:
            kd_student, kd_teacher = logits_student, self.teacher_logits_for(image, extras)
        return logits_student, {
            "loss_ce": self.ce_weight * cross_entropy(logits_student, target),
            "loss_kd": self.kd_weight * kd_loss(kd_student, kd_teacher, self.temperature, logit_stand=True),
            "loss_supcon": self.supcon_weight
            * supcon_loss(embedding, target, self.supcon_temperature, variant=self.supcon_variant),
        }
