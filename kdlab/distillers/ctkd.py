"""CTKD: Curriculum Temperature for Knowledge Distillation (Li et al., AAAI 2023), on KD and on DKD.

As CTKD's code (train_student.py --have_mlp 1, helper/loops.py, models/temp_global.py): a temperature
module (an extra trainable module of the distiller, in the same optimizer as the student, with the same
LR, momentum and weight decay, its parameters after the student's) predicts a raw value r behind a
gradient-reversal layer, and the distillation temperature is T = CTKD.T_START + CTKD.T_END * sigmoid(r).
The layer is the identity forward and multiplies the gradient by lambda backward; lambda follows the
curriculum over epochs (1-based, set once per epoch): CosineDecay(DECAY_MAX, DECAY_MIN, DECAY_LOOPS), or
CTKD's LinearDecay with COSINE_DECAY False. With the reference's DECAY_MAX 0 and DECAY_MIN -1, lambda goes
from 0 to -1 over DECAY_LOOPS epochs: the temperature ascends the distillation loss the student descends.

- CTKD: loss_ce = KD.LOSS.CE_WEIGHT * CE (the reference's -r), loss_kd = KD.LOSS.KD_WEIGHT (-a) *
  T^2 KL(softmax(t/T) || softmax(s/T)) (distiller_zoo/KD.py DistillKL; on z-scored logits with
  EXPERIMENT.LOGIT_STAND, DistillKL_logit_stand of the logit-standardization-KD repository's CTKD).
  KD.TEMPERATURE is not read (as the reference's --kd_T with --have_mlp 1); --logit-stand sets it and
  KD.LOSS.KD_WEIGHT as for KD (the LS CTKD script's --kd_T 2 -a 9).
- CTKD_DKD: loss_ce = DKD.CE_WEIGHT * CE (-r), loss_kd = min(epoch / DKD.WARMUP, 1) * DKD(DKD.ALPHA,
  DKD.BETA) at the learned T (-b 1 --distill dkd --dkd_alpha --dkd_beta). The reference has no warm-up
  (the shipped configs set DKD.WARMUP 0) and adds -a * KL(T), which its DKD recipe weights 0 (-a 0): that
  term is not computed. DKD.T is not read. --logit-stand is refused: the reference standardizes only
  its KL term, never DKD's.

CTKD.MODE instance (CTKD's instance-wise variant; KD only): the module is a 2-layer MLP on the
concatenated (detached) teacher and student logits, Linear(2C, HIDDEN) -> ReLU -> Linear(HIDDEN, 1), one
temperature per sample, and the KD term is the README's per-sample loop, mean_i T_i^2 sum_c q_ic
(log q_ic - log_softmax(s_i / T_i)_c) with q_i = softmax(t_i / T_i) + 1e-7. CTKD's public code releases
the loop but not the MLP; the MLP follows the paper's description (width: CTKD.HIDDEN).

Quirks of the references, kept: the gradient-reversal layer multiplies by lambda (not -lambda), the
schedule's negative values do the reversal; LinearDecay returns -i * (MAX - MIN) / LOOPS, i capped at
LOOPS - 1, ignoring DECAY_MAX as an offset; the LS repository's train_student.py standardizes when
--logit_stand is NOT given (`DistillKL() if opt.logit_stand else DistillKL_logit_stand()`), so its CTKD
script (no flag) runs the standardized loss: kdlab's EXPERIMENT.LOGIT_STAND True is that loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdlab.config import hooks
from kdlab.distillers.base import Distiller, cross_entropy
from kdlab.distillers.build import DISTILLERS
from kdlab.distillers.kd import KD
from kdlab.distillers.losses import _f32, dkd_terms, kd_loss, standardize
from kdlab.errors import ConfigError

MODES = ("global", "instance")


def cosine_decay(epoch: float, max_value: float, min_value: float, num_loops: float) -> float:
    """CTKD's CosineDecay.get_value: (cos(i pi / loops) + 1) / 2 * (max - min) + min, i clamped to [0, loops]."""
    i = min(max(epoch, 0), num_loops)
    value = (math.cos(i * math.pi / num_loops) + 1.0) * 0.5
    return value * (max_value - min_value) + min_value


def linear_decay(epoch: float, max_value: float, min_value: float, num_loops: float) -> float:
    """CTKD's LinearDecay.get_value: -i * (max - min) / loops, i clamped to [0, loops - 1] (as written there)."""
    i = max(epoch, 0)
    if i >= num_loops:
        i = num_loops - 1
    return i * -((max_value - min_value) / num_loops)


class _GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by lambda (CTKD's GradientReversalFunction)."""

    @staticmethod
    def forward(ctx, x, lambda_):
        ctx.lambda_ = lambda_
        return x.clone()

    @staticmethod
    def backward(ctx, grads):
        return grads.new_tensor(ctx.lambda_) * grads, None


def reverse_gradient(x: torch.Tensor, lambda_: float) -> torch.Tensor:
    return _GradientReversal.apply(x, lambda_)


class GlobalTemperature(nn.Module):
    """CTKD's Global_T: one learnable raw temperature `global_T` (shape (1,), initialized to 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.global_T = nn.Parameter(torch.ones(1))

    def forward(self, logits_teacher: torch.Tensor, logits_student: torch.Tensor, lambda_: float) -> torch.Tensor:
        return reverse_gradient(self.global_T, lambda_)


class InstanceTemperature(nn.Module):
    """One raw temperature per sample from the concatenated teacher and student logits, shape (N, 1)."""

    def __init__(self, num_classes: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * num_classes, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))

    def forward(self, logits_teacher: torch.Tensor, logits_student: torch.Tensor, lambda_: float) -> torch.Tensor:
        x = torch.cat([logits_teacher.detach(), logits_student.detach()], dim=1)
        return reverse_gradient(self.mlp(x.to(self.mlp[0].weight.dtype)), lambda_)


def instance_kd_loss(
    logits_student: torch.Tensor, logits_teacher: torch.Tensor, temperature: torch.Tensor, logit_stand: bool = False
) -> torch.Tensor:
    """CTKD README's instance-wise KD: mean_i T_i^2 sum_c q (log q - log_softmax(s_i/T_i)), q = softmax(t_i/T_i)+1e-7"""
    with torch.autocast(device_type=logits_student.device.type, enabled=False):
        s, t, temperature = _f32(logits_student), _f32(logits_teacher).detach(), _f32(temperature)
        if logit_stand:
            s, t = standardize(s), standardize(t)
        log_p_s = F.log_softmax(s / temperature, dim=1)
        q = F.softmax(t / temperature, dim=1) + 1e-7
        per_sample = temperature.squeeze(1) ** 2 * (q * (torch.log(q) - log_p_s)).sum(1)
        return per_sample.mean()


def dkd_loss_learned_t(logits_student, logits_teacher, target, alpha: float, beta: float, temperature: torch.Tensor):
    """DKD (distiller_zoo/DKD.py) at a temperature tensor of shape (1,) that takes a gradient; a scalar.

    losses.dkd_terms with zero_safe: the reference ran on torch <= 2.0, whose kl_div gave NCKD's zero
    teacher targets a zero gradient; torch >= 2.1 gives NaN, which would reach the temperature.
    """
    tckd, nckd = dkd_terms(logits_student, logits_teacher, target, temperature, zero_safe=True)
    return (alpha * tckd + beta * nckd).squeeze(0)


class _CurriculumTemperature(Distiller):
    """Student, teacher and CTKD's temperature module; subclasses define the loss at the learned T."""

    group = "CTKD"
    paper = "Li et al., AAAI 2023"
    teacher_logits_only = True  # the temperature module reads the teacher's logits, nothing else

    def __init__(self, student, teacher, mode: str, t_start: float, t_end: float, cosine: bool,
                 decay_max: float, decay_min: float, decay_loops: float, num_classes=None, hidden: int = 128):
        super().__init__(student, teacher)
        self.mode, self.t_start, self.t_end = mode, t_start, t_end
        self.schedule = cosine_decay if cosine else linear_decay
        self.decay = (decay_max, decay_min, decay_loops)
        self.temp_module = GlobalTemperature() if mode == "global" else InstanceTemperature(num_classes, hidden)
        self.last_temperature = None  # the temperature(s) of the last training step, detached

    @classmethod
    def needed_facts(cls, cfg) -> tuple[str, ...]:
        return ("num_classes",) if cfg.CTKD.MODE == "instance" else ()

    @classmethod
    def temperature_options(cls, cfg, facts) -> dict:
        node = cfg.CTKD
        return dict(mode=node.MODE, t_start=node.T_START, t_end=node.T_END, cosine=node.COSINE_DECAY,
                    decay_max=node.DECAY_MAX, decay_min=node.DECAY_MIN, decay_loops=node.DECAY_LOOPS,
                    num_classes=facts.num_classes, hidden=node.HIDDEN)

    def lambda_at(self, epoch: float) -> float:
        """The gradient-reversal strength of an epoch (1-based), as the reference's per-epoch decay_value."""
        return self.schedule(epoch, *self.decay)

    def temperature(self, logits_teacher, logits_student, epoch: float) -> torch.Tensor:
        raw = self.temp_module(logits_teacher, logits_student, self.lambda_at(epoch))
        temperature = self.t_start + self.t_end * torch.sigmoid(raw)
        self.last_temperature = temperature.detach()
        return temperature

    def logits(self, image, extras: dict):
        if extras.get("epoch") is None:
            raise ValueError(f"{type(self).__name__}.forward_train needs epoch=<1-based epoch> for its lambda schedule")
        logits_student, _ = self.student(image)
        logits_teacher = self.teacher_logits_for(image, extras)
        return logits_student, logits_teacher, self.temperature(logits_teacher, logits_student, extras["epoch"])


@DISTILLERS.register("CTKD")
class CTKD(_CurriculumTemperature):
    def __init__(self, student, teacher, ce_weight: float, kd_weight: float, logit_stand: bool = False, **options):
        super().__init__(student, teacher, **options)
        self.ce_weight, self.kd_weight, self.logit_stand = ce_weight, kd_weight, logit_stand

    # As KD: KD.TEMPERATURE = base_temp (not read by CTKD), KD.LOSS.KD_WEIGHT = kd_weight.
    apply_logit_stand = classmethod(KD.apply_logit_stand.__func__)

    @classmethod
    def from_config(cls, cfg, student, teacher, facts):
        return cls(student, teacher, ce_weight=cfg.KD.LOSS.CE_WEIGHT, kd_weight=cfg.KD.LOSS.KD_WEIGHT,
                   logit_stand=cfg.EXPERIMENT.LOGIT_STAND, **cls.temperature_options(cfg, facts))

    def forward_train(self, image, target, **extras):
        logits_student, logits_teacher, temperature = self.logits(image, extras)
        if self.mode == "instance":
            loss_kd = instance_kd_loss(logits_student, logits_teacher, temperature, self.logit_stand)
        else:
            loss_kd = kd_loss(logits_student, logits_teacher, temperature, self.logit_stand).squeeze(0)
        return logits_student, {
            "loss_ce": self.ce_weight * cross_entropy(logits_student, target),
            "loss_kd": self.kd_weight * loss_kd,
        }


@DISTILLERS.register("CTKD_DKD")
class CTKD_DKD(_CurriculumTemperature):  # noqa: N801  (the DISTILLER.TYPE name)
    def __init__(self, student, teacher, ce_weight: float, alpha: float, beta: float, warmup: float, **options):
        super().__init__(student, teacher, **options)
        self.ce_weight, self.alpha, self.beta, self.warmup = ce_weight, alpha, beta, warmup

    @classmethod
    def from_config(cls, cfg, student, teacher, facts):
        if cfg.CTKD.MODE != "global":
            raise ConfigError("CTKD.MODE 'instance' is defined for DISTILLER.TYPE CTKD only (CTKD's instance-wise "
                              "loss is KD's); use CTKD.MODE global with CTKD_DKD")
        return cls(student, teacher, ce_weight=cfg.DKD.CE_WEIGHT, alpha=cfg.DKD.ALPHA, beta=cfg.DKD.BETA,
                   warmup=cfg.DKD.WARMUP, **cls.temperature_options(cfg, facts))

    def forward_train(self, image, target, **extras):
        logits_student, logits_teacher, temperature = self.logits(image, extras)
        factor = min(extras["epoch"] / self.warmup, 1.0) if self.warmup > 0 else 1.0
        loss_dkd = dkd_loss_learned_t(logits_student, logits_teacher, target, self.alpha, self.beta, temperature)
        return logits_student, {
            "loss_ce": self.ce_weight * cross_entropy(logits_student, target),
            "loss_kd": factor * loss_dkd,
        }


def check_ctkd(cfg) -> None:
    """CTKD's keys in range (ConfigError naming the key otherwise)."""
    node = cfg.CTKD
    if node.MODE not in MODES:
        raise ConfigError(f"CTKD.MODE must be one of {', '.join(MODES)}, got {node.MODE!r}")
    if node.DECAY_LOOPS <= 0:
        raise ConfigError(f"CTKD.DECAY_LOOPS must be > 0 (epochs of the lambda curriculum), got {node.DECAY_LOOPS!r}")
    if node.T_START <= 0 or node.T_END < 0:
        raise ConfigError(f"CTKD.T_START must be > 0 and CTKD.T_END >= 0 (T = T_START + T_END * sigmoid(r)), "
                          f"got {node.T_START!r} and {node.T_END!r}")
    if node.HIDDEN <= 0:
        raise ConfigError(f"CTKD.HIDDEN must be > 0 (width of the instance-wise temperature MLP), got {node.HIDDEN!r}")


hooks.register_validator(check_ctkd)
