"""LG: the distillation of ViT students by a CNN teacher in the logit-standardization repo's tiny-transformers
(its pycls/models/distill.py DistillationWrapper and pycls/core/trainer.py): logit KD with or without logit
standardization (Sun et al. CVPR 2024), and the locality guidance of Li et al. (ECCV 2022) on features.

The reference's DISTILLATION keys are the LG group's, same names and defaults; its LOGIT_STANDARD is
kdlab's EXPERIMENT.LOGIT_STAND (set by --logit-stand, which also sets LG.LOGIT_TEMP = --base-temp and
LG.EXTRA_WEIGHT_IN = --kd-weight). Per batch, as the reference:

- the teacher sees the student's input resized to LG.TEACHER_IMG_SIZE (bilinear, align_corners False);
  the data pipeline delivers the student's size (DATASET.IMAGE_SIZE, e.g. 224 for CIFAR);
- loss_ce = CE of the student's logits, times 0.5 when ENABLE_LOGIT;
- loss_kd (ENABLE_LOGIT) = LOGIT_WEIGHT * w * T^2 * mean_b KL(softmax(t/T) || softmax(s/T)), T = LOGIT_TEMP,
  with w = EXTRA_WEIGHT_IN and both logits z-scored when EXPERIMENT.LOGIT_STAND, else w = 1 and raw logits
  (LOGIT_LOSS soft); LOGIT_LOSS hard: CE against the teacher's argmax. The student's logits are its
  distillation head's (feats["distill_logits"], a DeiT built with MODEL_KWARGS.DISTILLED True) when it has
  one, else its only head's. The reference reads `distill_logits` for every student, which only its DeiT
  sets, so its T2T/PiT/PVT KD runs fail as checked in; the published logs of those runs show them
  training, which distilling the single head reproduces;
- loss_feat (ENABLE_INTER) = INTER_WEIGHT * sum over the pairs (INTER_STUDENT_INDEX[i] into the student's
  block maps feats["feats"], INTER_TEACHER_INDEX[i] into the teacher's stage outputs feats["feats"][1:]) of
  the MSE between the teacher's map and the student's map after INTER_TRANSFORM (linear: a trainable 1x1
  conv to the teacher's channels; attention / similarity: the reference's normalized maps), both resized
  bilinearly to the larger of the two sizes.

Where both ENABLE_LOGIT and ENABLE_INTER are on, the reference's trainer keeps only CE + loss_inter (its second
`loss = loss_cls + ...` overwrites the first); kdlab adds all three terms (none of its configs enable both).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdlab.distillers.base import Distiller, cross_entropy
from kdlab.distillers.build import DISTILLERS
from kdlab.distillers.losses import kd_loss
from kdlab.errors import ConfigError

TRANSFORMS = ("linear", "attention", "similarity")


def _attention(feat: torch.Tensor) -> torch.Tensor:
    return F.normalize(feat.pow(2).mean(1).view(feat.size(0), -1))


def _similarity(feat: torch.Tensor) -> torch.Tensor:
    feat = feat.view(feat.size(0), -1)
    return F.normalize(feat @ feat.t())


def inter_loss(feat_t: torch.Tensor, feat_s: torch.Tensor, transform: str) -> torch.Tensor:
    """The reference's inter_distill_loss after resizing both maps to the larger size."""
    size = (max(feat_t.size(-2), feat_s.size(-2)), max(feat_t.size(-1), feat_s.size(-1)))
    feat_t = F.interpolate(feat_t, size, mode="bilinear", align_corners=False)
    feat_s = F.interpolate(feat_s, size, mode="bilinear", align_corners=False)
    if transform == "attention":
        feat_t, feat_s = _attention(feat_t), _attention(feat_s)
    elif transform == "similarity":
        feat_t, feat_s = _similarity(feat_t), _similarity(feat_s)
    return (feat_t - feat_s).pow(2).mean()


@DISTILLERS.register("LG")
class LG(Distiller):
    paper = "Li et al., ECCV 2022 (locality guidance); Sun et al., CVPR 2024 (tiny-transformers KD+LS)"
    group = "LG"
    dataset_facts = ("input_size",)

    def __init__(self, student, teacher, node, logit_stand: bool, input_size, in_channels: int = 3) -> None:
        super().__init__(student, teacher)
        self.node, self.logit_stand = node, logit_stand
        self.teacher_size = int(node.TEACHER_IMG_SIZE)
        if node.LOGIT_LOSS not in ("soft", "hard"):
            raise ConfigError(f"LG.LOGIT_LOSS {node.LOGIT_LOSS!r}: use soft or hard")
        if node.INTER_TRANSFORM not in TRANSFORMS:
            raise ConfigError(f"LG.INTER_TRANSFORM {node.INTER_TRANSFORM!r}: use one of {', '.join(TRANSFORMS)}")
        if len(node.INTER_STUDENT_INDEX) != len(node.INTER_TEACHER_INDEX):
            raise ConfigError(f"LG.INTER_STUDENT_INDEX {list(node.INTER_STUDENT_INDEX)} and LG.INTER_TEACHER_INDEX "
                              f"{list(node.INTER_TEACHER_INDEX)} must have the same length")
        if node.ENABLE_INTER and node.INTER_TRANSFORM == "linear":
            dims_s, dims_t = self._probe(input_size, in_channels)
            self.feature_transforms = nn.ModuleList(
                nn.Conv2d(dims_s[i], dims_t[j], 1) for i, j in zip(node.INTER_STUDENT_INDEX, node.INTER_TEACHER_INDEX))

    @torch.no_grad()
    def _probe(self, input_size, in_channels):
        """The maps' channel counts, from a zero batch through both models."""
        was_training = self.student.training
        self.student.eval()
        _, feats_s = self.student(torch.zeros(1, in_channels, *input_size))
        self.student.train(was_training)
        _, feats_t = self.teacher(torch.zeros(1, in_channels, self.teacher_size, self.teacher_size))
        dims_s, dims_t = [f.shape[1] for f in feats_s["feats"]], [f.shape[1] for f in feats_t["feats"][1:]]
        for key, index, dims in (("INTER_STUDENT_INDEX", self.node.INTER_STUDENT_INDEX, dims_s),
                                 ("INTER_TEACHER_INDEX", self.node.INTER_TEACHER_INDEX, dims_t)):
            if any(not 0 <= i < len(dims) for i in index):
                raise ConfigError(f"LG.{key} {list(index)}: the model has {len(dims)} maps "
                                  f"(indices 0..{len(dims) - 1})")
        return dims_s, dims_t

    @classmethod
    def apply_logit_stand(cls, cfg, base_temp, kd_weight):
        """LG.LOGIT_TEMP = base_temp, LG.EXTRA_WEIGHT_IN = kd_weight (the reference's LOGIT_TEMP, EXTRA_WEIGHT_IN)."""
        cfg.LG.LOGIT_TEMP = float(base_temp)
        cfg.LG.EXTRA_WEIGHT_IN = float(kd_weight)

    @classmethod
    def from_config(cls, cfg, student, teacher, facts):
        return cls(student, teacher, cfg.LG, cfg.EXPERIMENT.LOGIT_STAND, facts.input_size, facts.in_channels or 3)

    def teacher_input(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[-2:] == (self.teacher_size, self.teacher_size):
            return image
        return F.interpolate(image, size=(self.teacher_size,) * 2, mode="bilinear", align_corners=False)

    def logit_loss(self, logits_s: torch.Tensor, logits_t: torch.Tensor) -> torch.Tensor:
        if self.node.LOGIT_LOSS == "hard":
            return cross_entropy(logits_s, logits_t.argmax(dim=1))
        weight = self.node.EXTRA_WEIGHT_IN if self.logit_stand else 1.0
        return weight * kd_loss(logits_s, logits_t, self.node.LOGIT_TEMP, self.logit_stand)

    def forward_train(self, image, target, **extras):
        node = self.node
        logits_student, feats_student = self.student(image)
        losses = {"loss_ce": (0.5 if node.ENABLE_LOGIT else 1.0) * cross_entropy(logits_student, target)}
        if not (node.ENABLE_LOGIT or node.ENABLE_INTER):
            return logits_student, losses
        logits_teacher, feats_teacher = self.teacher_forward(self.teacher_input(image))
        if node.ENABLE_LOGIT:
            logits_s = feats_student.get("distill_logits", logits_student)
            losses["loss_kd"] = node.LOGIT_WEIGHT * self.logit_loss(logits_s, logits_teacher)
        if node.ENABLE_INTER:
            total = logits_student.new_zeros(())
            for k, (i, j) in enumerate(zip(node.INTER_STUDENT_INDEX, node.INTER_TEACHER_INDEX)):
                feat_s = feats_student["feats"][i]
                if node.INTER_TRANSFORM == "linear":
                    feat_s = self.feature_transforms[k](feat_s)
                total = total + inter_loss(feats_teacher["feats"][1 + j], feat_s, node.INTER_TRANSFORM)
            losses["loss_feat"] = node.INTER_WEIGHT * total
        return logits_student, losses
