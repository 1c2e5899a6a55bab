"""OFD: a comprehensive overhaul of feature distillation (Heo et al. ICCV 2019), as mdistiller's OFD.

loss_ce = OFD.LOSS.CE_WEIGHT * CE;
loss_feat = OFD.LOSS.FEAT_WEIGHT * sum_i ofd_feat_loss(connector_i(s_i), pool(t_i), margin_i) / 2**(n-1-i)
over the last n pre-ReLU stage features feats["preact_feats"][1:] of each model (n = the shorter of
the two models' stage lists get_stage_channels()[1:]; the deepest stage weighs 1, each earlier one
half the next), the teacher's map adaptive-average-pooled to the connector output's H x W.
- connector_i: ConnectorConvBN, a bias-free conv (OFD.CONNECTOR.KERNEL_SIZE, 'same' padding) from the
  student's to the teacher's channels, then BatchNorm; conv weights N(0, 2 / (k*k*out)), BN 1 and 0.
  Its parameters have the reference's order, shapes and state-dict keys (connectors.connectors.<i>.0 /
  .1), so the connector weights of a reference checkpoint copy in by order (or by name).
- margin_i (per channel, from the teacher's BatchNorm before the ReLU, get_bn_before_relu(): weight
  s = |gamma|, bias m = beta): E[x | x < 0] of N(m, s^2), i.e. m - s * phi(m/s) / Phi(-m/s), where
  Phi(-m/s) > 0.001, else -3s; computed at construction in float64 with scipy's norm.cdf, stored in
  float32 as mdistiller does (non-persistent buffers, so checkpoints hold what the reference's hold).
- ofd_feat_loss: partial L2: (s - margin)^2 where s > margin >= t, (s - t)^2 where s > t > margin and
  t <= 0, and (s - t)^2 where t > 0; summed over C, H, W and averaged over the batch.
- The teacher runs in train mode (BatchNorm on the batch's statistics), as in mdistiller (its OFD.train
  leaves the teacher in train mode) and the OFD authors' code. Difference: mdistiller's teacher also
  updates its running statistics on every batch; kdlab restores them (and eval mode) after each teacher
  forward, which changes no loss (train mode never reads them) and keeps the teacher file's statistics.
- Difference, only where mdistiller fails: mdistiller pairs the last n stages with the *first* n margins
  (a shape error when the teacher has more stages than the student); kdlab takes the last n margins.
mdistiller names the feature term "loss_kd"; kdlab calls it "loss_feat".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdlab.distillers.base import Distiller, cross_entropy
from kdlab.distillers.build import DISTILLERS
from kdlab.distillers.losses import _f32
from kdlab.errors import ConfigError
from kdlab.models.stages import bn_before_relu, stage_channels


class ConnectorConvBN(nn.Module):
    """mdistiller's OFD connectors: per stage, conv (student -> teacher channels, no bias) then BatchNorm."""

    def __init__(self, s_channels: Sequence[int], t_channels: Sequence[int], kernel_size: int = 1) -> None:
        super().__init__()
        if len(s_channels) != len(t_channels):
            raise ValueError(f"unequal numbers of stages: student {list(s_channels)}, teacher {list(t_channels)}")
        self.s_channels, self.t_channels = list(s_channels), list(t_channels)
        self.connectors = nn.ModuleList(
            [self._connector(s, t, kernel_size) for s, t in zip(s_channels, t_channels)]
        )

    @staticmethod
    def _connector(s_channel: int, t_channel: int, kernel_size: int) -> nn.Sequential:
        conv = nn.Conv2d(s_channel, t_channel, kernel_size, stride=1, padding=(kernel_size - 1) // 2, bias=False)
        bn = nn.BatchNorm2d(t_channel)
        n = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
        with torch.no_grad():
            conv.weight.normal_(0, math.sqrt(2.0 / n))
            bn.weight.fill_(1)
            bn.bias.zero_()
        return nn.Sequential(conv, bn)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [connector(f) for connector, f in zip(self.connectors, feats)]


def ofd_margin(bn: nn.BatchNorm2d) -> torch.Tensor:
    """Per-channel E[x | x < 0] of N(beta, |gamma|^2) (-3|gamma| where P(x < 0) <= 0.001), float32, 1 x C x 1 x 1."""
    from scipy.stats import norm  # imported here, when OFD is built

    margin = []
    for s, m in zip(bn.weight.detach().cpu().tolist(), bn.bias.detach().cpu().tolist()):
        s = abs(s)
        if s == 0:
            raise ConfigError("OFD: a teacher BatchNorm before a ReLU has a zero weight; its margin is undefined")
        if norm.cdf(-m / s) > 0.001:  # the reference's expression, term for term (the same float64 rounding)
            margin.append(-s * math.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi) / norm.cdf(-m / s) + m)
        else:
            margin.append(-3 * s)
    return torch.tensor(margin, dtype=torch.float32).reshape(1, -1, 1, 1)


def ofd_feat_loss(source: torch.Tensor, target: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """OFD's partial L2 between a connected student map and the teacher's pre-ReLU map (N x C x H x W)."""
    with torch.autocast(device_type=source.device.type, enabled=False):
        source, target = _f32(source), _f32(target).detach()
        margin = margin.to(source)
        ones = lambda mask: mask.to(source.dtype)  # noqa: E731
        loss = (
            (source - margin) ** 2 * ones((source > margin) & (target <= margin))
            + (source - target) ** 2 * ones((source > target) & (target > margin) & (target <= 0))
            + (source - target) ** 2 * ones(target > 0)
        )
        return torch.abs(loss).mean(dim=0).sum()


@DISTILLERS.register("OFD")
class OFD(Distiller):
    paper = "Heo et al., ICCV 2019"
    group = "OFD"
    def __init__(self, student, teacher, ce_weight: float, feat_weight: float, kernel_size: int = 1) -> None:
        super().__init__(student, teacher)
        self.ce_weight, self.feat_weight = ce_weight, feat_weight
        if kernel_size < 1:
            raise ConfigError(f"OFD.CONNECTOR.KERNEL_SIZE must be >= 1, got {kernel_size}")
        t_channels = stage_channels(teacher, "teacher")[1:]
        s_channels = stage_channels(student, "student")[1:]
        bns = bn_before_relu(teacher, "teacher")
        n = min(len(t_channels), len(s_channels))
        if n == 0 or len(bns) < n:
            raise ConfigError(
                f"OFD needs stages after the stem in both models and a teacher BatchNorm before each ReLU: "
                f"teacher stages {t_channels}, student stages {s_channels}, {len(bns)} teacher BatchNorms"
            )
        self.connectors = ConnectorConvBN(s_channels[-n:], t_channels[-n:], kernel_size)
        self.num_stages = n
        for i, bn in enumerate(bns[-n:]):
            if bn.num_features != t_channels[-n:][i]:
                raise ConfigError(
                    f"OFD: the teacher's BatchNorm before ReLU {i} has {bn.num_features} channels but its "
                    f"stage has {t_channels[-n:][i]}"
                )
            self.register_buffer(f"margin{i}", ofd_margin(bn), persistent=False)

    @classmethod
    def from_config(cls, cfg, student, teacher, facts):
        return cls(
            student,
            teacher,
            ce_weight=cfg.OFD.LOSS.CE_WEIGHT,
            feat_weight=cfg.OFD.LOSS.FEAT_WEIGHT,
            kernel_size=cfg.OFD.CONNECTOR.KERNEL_SIZE,
        )

    def margins(self) -> list[torch.Tensor]:
        return [getattr(self, f"margin{i}") for i in range(self.num_stages)]

    @torch.no_grad()
    def teacher_forward(self, image):
        """The teacher in train mode, as mdistiller runs it; its modes and BatchNorm statistics restored after."""
        modes = [(m, m.training) for m in self.teacher.modules()]
        saved = [(b, b.clone()) for b in self.teacher.buffers()]
        self.teacher.train()
        try:
            return self.teacher(image)
        finally:
            for buf, copy in saved:
                buf.copy_(copy)
            for module, mode in modes:
                module.training = mode

    def feature_loss(self, preacts_student, preacts_teacher) -> torch.Tensor:
        n = self.num_stages
        feats_s = self.connectors(preacts_student[-n:])
        total = 0
        for i, (f_s, f_t, margin) in enumerate(zip(feats_s, preacts_teacher[-n:], self.margins())):
            target = F.adaptive_avg_pool2d(f_t, f_s.shape[-2:])
            total = total + ofd_feat_loss(f_s, target, margin) / 2 ** (n - i - 1)
        return total

    def forward_train(self, image, target, **extras):
        logits_student, feats_student = self.student(image)
        _, feats_teacher = self.teacher_forward(image)
        loss_feat = self.feature_loss(feats_student["preact_feats"][1:], feats_teacher["preact_feats"][1:])
        return logits_student, {
            "loss_ce": self.ce_weight * cross_entropy(logits_student, target),
            "loss_feat": self.feat_weight * loss_feat,
        }
