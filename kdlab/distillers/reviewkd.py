"""ReviewKD: distilling knowledge via knowledge review (Chen et al. CVPR 2021), as mdistiller's REVIEWKD.

The student's review features (feats["feats"], or feats["preact_feats"] with REVIEWKD.STU_PREACT, then
pooled_feat as a 1 x 1 map; the last len(IN_CHANNELS) of them, so a stem is left out when there are more)
are fused from the deepest to the shallowest by attention-based fusion modules (ABF): each maps its
feature to the fusion width with a 1x1 conv + BN, mixes in the upsampled (nearest) fused feature of
the level below it with two sigmoid attention maps, resizes the result to the teacher's size
(nearest) and maps it to the teacher's channels with a 3x3 conv + BN. The teacher's maps are
preact_feats[1:] (each stage before its last ReLU) and pooled_feat; the review term is
mdistiller's HCL loss (kdlab.distillers.feature_losses.hcl_loss) between each pair:

    loss_ce = CE_WEIGHT * CE;  loss_feat = REVIEWKD_WEIGHT * min(epoch / WARMUP_EPOCHS, 1) * HCL.

mdistiller names the review term "loss_kd"; kdlab calls it "loss_feat" as for every feature term.
Epochs count from 1 (the trainer passes `epoch`); WARMUP_EPOCHS 0 means no warm-up (mdistiller divides
by zero).

The channel and size lists are the configured values mdistiller's YAML files set per pair
(IN_CHANNELS, OUT_CHANNELS shallow to deep with the pooled feature last; SHAPES, OUT_SHAPES the
student's and teacher's map sizes deep to shallow, 1 first). kdlab checks them against the models'
features, probed once at construction with a zero batch of the dataset's input size in eval mode,
and raises a ConfigError naming the key and the values the models have.

The ABFs are `self.abfs`, built as mdistiller builds them (one per IN_CHANNELS entry, in that order,
then reversed: abfs.0 is the deepest, un-fused one) with the same modules, shapes and state-dict keys,
so a reference checkpoint's ABF weights copy in by order (or by key). Their fusion width is
min(512, IN_CHANNELS[-1]) as in mdistiller, which reads REVIEWKD.MAX_MID_CHANNEL but never uses it;
kdlab keeps that (for the same ABF shapes as the reference) and logs a warning when the key is set
to a value other than 512.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdlab.distillers.base import Distiller, cross_entropy
from kdlab.distillers.build import DISTILLERS
from kdlab.distillers.connectors import probe_features
from kdlab.distillers.feature_losses import hcl_loss
from kdlab.errors import ConfigError

log = logging.getLogger("kdlab")
MID_CHANNEL_CAP = 512  # mdistiller: mid_channel = min(512, in_channels[-1]), whatever MAX_MID_CHANNEL says


class ABF(nn.Module):
    """mdistiller's attention-based fusion module (same submodules, initialization and state-dict keys)."""

    def __init__(self, in_channel: int, mid_channel: int, out_channel: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channel, mid_channel, kernel_size=1, bias=False),
            nn.BatchNorm2d(mid_channel),
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channel, out_channel, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(out_channel),
        )
        if fuse:
            self.att_conv = nn.Sequential(nn.Conv2d(mid_channel * 2, 2, kernel_size=1), nn.Sigmoid())
        else:
            self.att_conv = None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, shape: int | None = None,
                out_shape: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(output at the teacher's size and channels, fused feature passed to the next, shallower level)."""
        n, _, h, w = x.shape
        x = self.conv1(x)
        if self.att_conv is not None:
            y = F.interpolate(y, (shape, shape), mode="nearest")
            z = self.att_conv(torch.cat([x, y], dim=1))
            x = x * z[:, 0].view(n, 1, h, w) + y * z[:, 1].view(n, 1, h, w)
        if x.shape[-1] != out_shape:
            x = F.interpolate(x, (out_shape, out_shape), mode="nearest")
        return self.conv2(x), x


def student_review_features(feats: dict, preact: bool) -> list[torch.Tensor]:
    """feats["feats"] (or "preact_feats") then pooled_feat as N x C x 1 x 1: shallow to deep, as mdistiller."""
    maps = feats["preact_feats"] if preact else feats["feats"]
    return list(maps) + [feats["pooled_feat"].unsqueeze(-1).unsqueeze(-1)]


def teacher_review_features(feats: dict) -> list[torch.Tensor]:
    """The teacher's preact_feats[1:] (the stem left out) then pooled_feat as N x C x 1 x 1."""
    return list(feats["preact_feats"][1:]) + [feats["pooled_feat"].unsqueeze(-1).unsqueeze(-1)]


@DISTILLERS.register("REVIEWKD")
class ReviewKD(Distiller):
    paper = "Chen et al., CVPR 2021"
    group = "REVIEWKD"
    dataset_facts = ("input_size",)  # the channel and size keys are checked on features probed at this size

    def __init__(self, student, teacher, in_channels: Sequence[int], out_channels: Sequence[int],
                 shapes: Sequence[int], out_shapes: Sequence[int], input_size: Sequence[int], ce_weight: float,
                 review_weight: float, warmup_epochs: float, stu_preact: bool) -> None:
        super().__init__(student, teacher)
        self.shapes, self.out_shapes = [int(s) for s in shapes], [int(s) for s in out_shapes]
        self.ce_weight, self.review_weight = ce_weight, review_weight
        self.warmup_epochs, self.stu_preact = warmup_epochs, stu_preact
        check_review_keys(student, teacher, in_channels, out_channels, self.shapes, self.out_shapes,
                          stu_preact, input_size)
        abfs = nn.ModuleList()
        mid_channel = min(MID_CHANNEL_CAP, in_channels[-1])
        for idx, in_channel in enumerate(in_channels):
            abfs.append(ABF(in_channel, mid_channel, out_channels[idx], idx < len(in_channels) - 1))
        self.abfs = abfs[::-1]

    @classmethod
    def from_config(cls, cfg, student, teacher, facts):
        node = cfg.REVIEWKD
        mid = min(MID_CHANNEL_CAP, node.IN_CHANNELS[-1]) if node.IN_CHANNELS else None
        if node.MAX_MID_CHANNEL != MID_CHANNEL_CAP:
            log.warning("REVIEWKD.MAX_MID_CHANNEL %s is not used, as in mdistiller: the ABFs' fusion width is "
                        "min(512, REVIEWKD.IN_CHANNELS[-1]) = %s", node.MAX_MID_CHANNEL, mid)
        return cls(
            student,
            teacher,
            in_channels=list(node.IN_CHANNELS),
            out_channels=list(node.OUT_CHANNELS),
            shapes=list(node.SHAPES),
            out_shapes=list(node.OUT_SHAPES),
            input_size=tuple(facts.input_size),
            ce_weight=node.CE_WEIGHT,
            review_weight=node.REVIEWKD_WEIGHT,
            warmup_epochs=node.WARMUP_EPOCHS,
            stu_preact=node.STU_PREACT,
        )

    def warmup_factor(self, epoch: float) -> float:
        """min(epoch / WARMUP_EPOCHS, 1), epochs counting from 1; WARMUP_EPOCHS 0 means none."""
        return min(epoch / self.warmup_epochs, 1.0) if self.warmup_epochs > 0 else 1.0

    def review(self, feats_student: dict) -> list[torch.Tensor]:
        """The ABF outputs, shallow to deep (each at its teacher map's size and channels)."""
        x = student_review_features(feats_student, self.stu_preact)[::-1]
        _check_sizes(x, self.shapes, "REVIEWKD.SHAPES", "student")
        out_features, res_features = self.abfs[0](x[0], out_shape=self.out_shapes[0])
        results = [out_features]
        for features, abf, shape, out_shape in zip(x[1:], self.abfs[1:], self.shapes[1:], self.out_shapes[1:]):
            out_features, res_features = abf(features, res_features, shape, out_shape)
            results.insert(0, out_features)
        return results

    def forward_train(self, image, target, **extras):
        if extras.get("epoch") is None:
            raise ValueError("REVIEWKD.forward_train needs epoch=<1-based epoch> for its warm-up")
        logits_student, feats_student = self.student(image)
        _, feats_teacher = self.teacher_forward(image)
        results = self.review(feats_student)
        targets = teacher_review_features(feats_teacher)
        _check_sizes(targets[::-1], self.out_shapes, "REVIEWKD.OUT_SHAPES", "teacher")
        loss_ce = self.ce_weight * cross_entropy(logits_student, target)
        loss_feat = self.review_weight * self.warmup_factor(extras["epoch"]) * hcl_loss(results, targets)
        return logits_student, {"loss_ce": loss_ce, "loss_feat": loss_feat}


def _check_sizes(maps_deep_first: list[torch.Tensor], sizes: list[int], key: str, who: str) -> None:
    """Training batches must give the map sizes the keys name (they were checked at the probe's input size)."""
    for feat, size in zip(maps_deep_first, sizes):
        if feat.shape[-2] != size or feat.shape[-1] != size:
            got = [tuple(f.shape[-2:]) for f in maps_deep_first[: len(sizes)]]
            raise ConfigError(f"{key} {sizes}: the {who}'s review features of this batch have sizes {got} (deep to "
                              "shallow); train at the input size the keys were set for")


@torch.no_grad()
def check_review_keys(student, teacher, in_channels, out_channels, shapes, out_shapes, stu_preact, input_size):
    """ConfigError naming the REVIEWKD key and the models' actual values if a channel or size list does not fit."""
    lists = {"IN_CHANNELS": in_channels, "OUT_CHANNELS": out_channels, "SHAPES": shapes, "OUT_SHAPES": out_shapes}
    lengths = {len(v) for v in lists.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise ConfigError("REVIEWKD.IN_CHANNELS, OUT_CHANNELS, SHAPES and OUT_SHAPES need one entry per reviewed "
                          f"feature, as many in each, got {', '.join(f'{k} {list(v)}' for k, v in lists.items())}")
    n = lengths.pop()
    where = f"at input {tuple(input_size)}"
    maps_s = student_review_features(probe_features(student, input_size), stu_preact)
    maps_t = teacher_review_features(probe_features(teacher, input_size))
    if len(maps_t) != n:
        raise ConfigError(
            f"REVIEWKD.OUT_CHANNELS {list(out_channels)}: the teacher has {len(maps_t)} review features "
            f"(preact_feats[1:] and pooled_feat) with channels {_channels(maps_t)}; the four REVIEWKD lists "
            "need one entry for each")
    if len(maps_s) < n:
        raise ConfigError(
            f"REVIEWKD.IN_CHANNELS {list(in_channels)}: the student has only {len(maps_s)} review features "
            f"(its feats and pooled_feat) with channels {_channels(maps_s)}, fewer than the teacher's {n}")
    maps_s = maps_s[-n:]
    for key, maps, who in (("IN_CHANNELS", maps_s, "student"), ("OUT_CHANNELS", maps_t, "teacher")):
        if list(lists[key]) != _channels(maps):
            raise ConfigError(
                f"REVIEWKD.{key} {list(lists[key])} does not match the {who}: its review features (shallow to "
                f"deep, pooled_feat last) have channels {_channels(maps)}")
    for key, maps, who in (("SHAPES", maps_s, "student"), ("OUT_SHAPES", maps_t, "teacher")):
        sizes = [tuple(f.shape[-2:]) for f in maps[::-1]]
        if any(h != w for h, w in sizes):
            raise ConfigError(f"REVIEWKD.{key}: the {who}'s review features {where} are not square {sizes}; "
                              "ReviewKD takes one size per map")
        if list(lists[key]) != [h for h, _ in sizes]:
            raise ConfigError(
                f"REVIEWKD.{key} {list(lists[key])} does not match the {who} {where}: its review features' "
                f"sizes (deep to shallow, pooled_feat first) are {[h for h, _ in sizes]}")


def _channels(maps: list[torch.Tensor]) -> list[int]:
    return [int(f.shape[1]) for f in maps]
