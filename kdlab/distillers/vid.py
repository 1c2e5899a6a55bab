"""VID: variational information distillation (Ahn et al. CVPR 2019), as mdistiller's VID.

loss_ce = VID.LOSS.CE_WEIGHT * CE;
loss_feat = VID.LOSS.FEAT_WEIGHT * sum_i vid_loss(regressor_i, log_scale_i, s_i, t_i, VID.EPS) over the
stage outputs feats["feats"][1:] paired in order (the extra stages of the deeper model dropped):
the larger map is average-pooled to the smaller one's size, the regressor (1x1 conv s->t, ReLU, 1x1
t->t, ReLU, 1x1 t->t, no biases) predicts the teacher map's mean, the variance is softplus(log_scale)
+ EPS per teacher channel, and the loss is the mean over batch, channels and positions of the
Gaussian negative log-likelihood 0.5 * ((mean - t)^2 / var + log var) (without the log(2 pi) constant).
- log_scale_i starts at softplus^-1(VID.INIT_PRED_VAR - VID.EPS) (the variance starts at INIT_PRED_VAR).
- Channels are read by probing both models once, at construction, with a zero batch of VID.INPUT_SIZE
  (empty: the dataset's training size) in eval mode. Difference: mdistiller probes with random data in
  train mode, which moves the teacher's (and student's) BatchNorm running statistics before training
  starts; kdlab leaves them untouched.
- Difference (a bug of mdistiller's): mdistiller keeps the log-scales in a plain Python list, so they
  are not registered: its optimizer never updates them (the variances stay at INIT_PRED_VAR, VID
  reduces to a weighted MSE), checkpoints do not hold them and .to() does not move them. kdlab
  registers them (nn.ParameterList `log_scales`, after `regressors`) and, by default, trains them with
  the rest, as the paper and the authors' code do. VID.TRAIN_VARIANCE False freezes them
  (requires_grad False, not counted as extra parameters): mdistiller's behaviour, step for step (the
  reference case vid_mdistiller checks it; the frozen variances are computed in float32, as mdistiller's
  unregistered tensors are, even in a float64 model).
- The regressors have the reference's parameter order, shapes and state-dict keys
  (regressors.<i>.0/.2/.4.weight), so a reference checkpoint's regressor weights copy in by order (it
  holds no log-scales: they keep their initial value).
- Difference, for non-square maps only: mdistiller pools to (H, H) of the smaller map, kdlab to its (H, W).
mdistiller names the feature term "loss_kd"; kdlab calls it "loss_feat".
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from kdlab.distillers.base import Distiller, cross_entropy
from kdlab.distillers.build import DISTILLERS
from kdlab.distillers.connectors import feature_shapes, probe_size
from kdlab.distillers.feature_losses import _match_spatial
from kdlab.distillers.losses import _f32
from kdlab.errors import ConfigError


def conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, padding=0, bias=False)


def vid_regressor(s_channels: int, t_channels: int) -> nn.Sequential:
    """mdistiller's regressor: 1x1 conv, ReLU, 1x1 conv, ReLU, 1x1 conv (bias-free), student -> teacher channels."""
    return nn.Sequential(
        conv1x1(s_channels, t_channels), nn.ReLU(), conv1x1(t_channels, t_channels), nn.ReLU(),
        conv1x1(t_channels, t_channels),
    )


def vid_loss(regressor: nn.Module, log_scale: torch.Tensor, f_s: torch.Tensor, f_t: torch.Tensor,
             eps: float = 1e-5) -> torch.Tensor:
    """Gaussian NLL of the teacher map: regressed mean, per-channel variance softplus(log_scale) + eps."""
    f_s, f_t = _match_spatial(f_s, f_t)
    pred_mean = regressor(f_s)
    with torch.autocast(device_type=pred_mean.device.type, enabled=False):
        pred_mean, f_t = _f32(pred_mean), _f32(f_t).detach()
        pred_var = torch.log(1.0 + torch.exp(log_scale)) + eps  # the reference's softplus, overflow and all
        pred_var = pred_var.view(1, -1, 1, 1).to(pred_mean)
        neg_log_prob = 0.5 * ((pred_mean - f_t) ** 2 / pred_var + torch.log(pred_var))
        return torch.mean(neg_log_prob)


@DISTILLERS.register("VID")
class VID(Distiller):
    paper = "Ahn et al., CVPR 2019"
    group = "VID"
    dataset_facts = ("input_size",)  # channels are probed at the training size if VID.INPUT_SIZE is empty

    def __init__(self, student, teacher, ce_weight: float, feat_weight: float, eps: float = 1e-5,
                 init_pred_var: float = 5.0, input_size=(32, 32), train_variance: bool = True) -> None:
        super().__init__(student, teacher)
        if not eps >= 0 or not init_pred_var > eps:
            raise ConfigError(
                f"VID needs VID.EPS >= 0 and VID.INIT_PRED_VAR > VID.EPS (the variance starts at INIT_PRED_VAR "
                f"and never falls below EPS), got EPS {eps}, INIT_PRED_VAR {init_pred_var}"
            )
        self.ce_weight, self.feat_weight, self.eps = ce_weight, feat_weight, eps
        s_channels = [s[1] for s in self._shapes(student, input_size, "student")[1:]]
        t_channels = [s[1] for s in self._shapes(teacher, input_size, "teacher")[1:]]
        init = float(np.log(np.exp(init_pred_var - eps) - 1.0))  # the reference's expression
        self.regressors = nn.ModuleList()
        log_scales = []
        for s, t in zip(s_channels, t_channels):
            self.regressors.append(vid_regressor(s, t))
            # float32, as the reference's
            log_scales.append(nn.Parameter(init * torch.ones(t), requires_grad=train_variance))
        self.log_scales = nn.ParameterList(log_scales)

    @staticmethod
    def _shapes(model, input_size, who: str):
        try:
            return feature_shapes(model, input_size)
        except RuntimeError as exc:
            raise ConfigError(
                f"VID.INPUT_SIZE {list(input_size)}: the {who} cannot run on this size ({exc}); "
                "set it to the training input size (or leave it empty for the dataset's)"
            ) from None

    @classmethod
    def needed_facts(cls, cfg):
        return () if cfg.VID.INPUT_SIZE else cls.dataset_facts

    @classmethod
    def from_config(cls, cfg, student, teacher, facts):
        return cls(
            student,
            teacher,
            ce_weight=cfg.VID.LOSS.CE_WEIGHT,
            feat_weight=cfg.VID.LOSS.FEAT_WEIGHT,
            eps=cfg.VID.EPS,
            init_pred_var=cfg.VID.INIT_PRED_VAR,
            input_size=probe_size("VID.INPUT_SIZE", cfg.VID.INPUT_SIZE, facts),
            train_variance=cfg.VID.TRAIN_VARIANCE,
        )

    def forward_train(self, image, target, **extras):
        logits_student, feats_student = self.student(image)
        _, feats_teacher = self.teacher_forward(image)
        loss_vid = 0
        pairs = zip(self.regressors, self.log_scales, feats_student["feats"][1:], feats_teacher["feats"][1:])
        for regressor, log_scale, f_s, f_t in pairs:
            if not log_scale.requires_grad:  # mdistiller's never-moved float32 tensor, whatever the model dtype
                log_scale = log_scale.float()
            loss_vid += vid_loss(regressor, log_scale, f_s, f_t, self.eps)
        return logits_student, {
            "loss_ce": self.ce_weight * cross_entropy(logits_student, target),
            "loss_feat": self.feat_weight * loss_vid,
        }
