"""Optimizers (SGD, Adam, AdamW, Lion) and epoch-level LR schedules with linear warm-up."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Optional

import torch
from yacs.config import CfgNode

from kdlab.config import hooks
from kdlab.errors import ConfigError
from kdlab.registry import Registry

OPTIMIZERS = Registry("optimizer")
SCHEDULERS = Registry("scheduler")
hooks.register_names("SOLVER.TYPE", OPTIMIZERS.names)
hooks.register_names("SOLVER.SCHEDULER", SCHEDULERS.names)


def _fused_ok(params: list) -> bool:
    """Fused kernels need every parameter on one floating-point device type that has them."""
    params = [p for g in params for p in g["params"]] if params and isinstance(params[0], dict) else params
    devices = {p.device.type for p in params}
    return len(devices) == 1 and devices <= {"cuda", "cpu"} and all(p.is_floating_point() for p in params)


@OPTIMIZERS.register("SGD")
def sgd(params, cfg: CfgNode) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params, lr=cfg.SOLVER.LR, momentum=cfg.SOLVER.MOMENTUM, weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        nesterov=cfg.SOLVER.NESTEROV, fused=_fused_ok(params) or None,
    )


@OPTIMIZERS.register("Adam")
def adam(params, cfg: CfgNode) -> torch.optim.Optimizer:
    return torch.optim.Adam(
        params, lr=cfg.SOLVER.LR, betas=tuple(cfg.SOLVER.BETAS), weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        fused=_fused_ok(params) or None,
    )


@OPTIMIZERS.register("AdamW")
def adamw(params, cfg: CfgNode) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        params, lr=cfg.SOLVER.LR, betas=tuple(cfg.SOLVER.BETAS), weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        fused=_fused_ok(params) or None,
    )


@OPTIMIZERS.register("Lion")
def lion(params, cfg: CfgNode) -> torch.optim.Optimizer:
    """Lion (Chen et al. 2023) from lion-pytorch; use ~3-10x smaller LR and larger weight decay than AdamW."""
    from lion_pytorch import Lion

    return Lion(params, lr=cfg.SOLVER.LR, betas=tuple(cfg.SOLVER.BETAS), weight_decay=cfg.SOLVER.WEIGHT_DECAY)


def _check_dot(cfg: CfgNode) -> None:
    if cfg.SOLVER.TRAINER == "dot":
        from kdlab.engine.dot import check_config

        check_config(cfg, hooks.method_class(cfg.DISTILLER.TYPE))


hooks.register_validator(_check_dot)


def _check_no_decay(cfg: CfgNode) -> None:
    if cfg.SOLVER.NO_DECAY_1D and cfg.SOLVER.TRAINER == "dot":
        raise ConfigError("SOLVER.NO_DECAY_1D True: SOLVER.TRAINER dot needs one parameter group; set it False")


hooks.register_validator(_check_no_decay)


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: CfgNode) -> torch.optim.Optimizer:
    """SOLVER.TYPE's optimizer; under SOLVER.TRAINER dot, DOT's (kdlab.engine.dot: SGD with two momenta)."""
    if cfg.SOLVER.TRAINER == "dot":
        from kdlab.engine.dot import build_dot_optimizer

        return build_dot_optimizer(list(params), cfg)
    return OPTIMIZERS.get(cfg.SOLVER.TYPE)(list(params), cfg)


NO_DECAY_NAMES = ("cls_token", "dist_token", "pos_embed")  # tokens and position embeddings (timm/DeiT convention)


def weight_decay_groups(named_params: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    """SOLVER.NO_DECAY_1D: [decayed, not decayed] parameter groups. Not decayed, as tiny-transformers'
    optimizer (its reset_lr_weight_decay) does: 1-D parameters (norms), biases, and tokens / position
    embeddings (a parameter whose own name starts with one of NO_DECAY_NAMES, e.g. pos_embed1)."""
    decay, no_decay = [], []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        own = name.rsplit(".", 1)[-1]
        skip = p.ndim <= 1 or own == "bias" or own.startswith(NO_DECAY_NAMES)
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def improves(metric: str, value: float, best: Optional[float]) -> bool:
    """Whether `value` of `metric` beats `best`: lower for a *_loss, higher otherwise; anything beats None."""
    if best is None:
        return True
    return value < best if metric.endswith("loss") else value > best


class EpochSchedule:
    """LR as a function of the (1-based) epoch, mdistiller-style: set once at each epoch start."""

    def __init__(self, cfg: CfgNode) -> None:
        self.base_lr = cfg.SOLVER.LR
        self.warmup = cfg.SOLVER.WARMUP_EPOCHS
        self.warmup_factor = cfg.SOLVER.WARMUP_FACTOR
        self.epochs = cfg.SOLVER.EPOCHS
        self.cfg = cfg

    def lr(self, epoch: int) -> float:
        if self.warmup and epoch <= self.warmup:
            frac = (epoch - 1) / self.warmup
            return self.base_lr * (self.warmup_factor + (1 - self.warmup_factor) * frac)
        return self.after_warmup(epoch)

    def after_warmup(self, epoch: int) -> float:
        raise NotImplementedError

    def observe(self, metrics: dict) -> None:
        """Called after each epoch's evaluation (plateau schedules react to it)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@SCHEDULERS.register("multistep")
class MultiStep(EpochSchedule):
    """LR * DECAY_RATE ** (number of LR_DECAY_STAGES strictly below epoch) -- mdistiller's rule."""

    def after_warmup(self, epoch: int) -> float:
        steps = sum(epoch > s for s in self.cfg.SOLVER.LR_DECAY_STAGES)
        return self.base_lr * self.cfg.SOLVER.LR_DECAY_RATE**steps


@SCHEDULERS.register("constant")
class Constant(EpochSchedule):
    def after_warmup(self, epoch: int) -> float:
        return self.base_lr


@SCHEDULERS.register("cosine")
class Cosine(EpochSchedule):
    """Half-cosine from LR to MIN_LR over the epochs after warm-up."""

    def after_warmup(self, epoch: int) -> float:
        span = max(1, self.epochs - self.warmup)
        t = min(1.0, (epoch - 1 - self.warmup) / span)
        lo = self.cfg.SOLVER.MIN_LR
        return lo + (self.base_lr - lo) * 0.5 * (1 + math.cos(math.pi * t))


@SCHEDULERS.register("cosine_timm")
class CosineTimm(EpochSchedule):
    """timm's CosineLRScheduler as tiny-transformers uses it (t_initial EPOCHS, warmup_prefix False, stepped per
    epoch): the half-cosine from LR to MIN_LR runs over all EPOCHS counted from epoch 1, and the linear warm-up
    (the same as every schedule's here) replaces its first WARMUP_EPOCHS. "cosine" instead starts the cosine
    after the warm-up."""

    def after_warmup(self, epoch: int) -> float:
        t = min(1.0, (epoch - 1) / max(1, self.epochs))
        lo = self.cfg.SOLVER.MIN_LR
        return lo + (self.base_lr - lo) * 0.5 * (1 + math.cos(math.pi * t))


@SCHEDULERS.register("plateau")
class Plateau(EpochSchedule):
    """Reduce LR by PLATEAU_FACTOR after PLATEAU_PATIENCE epochs without improvement of PLATEAU_METRIC."""

    def __init__(self, cfg: CfgNode) -> None:
        super().__init__(cfg)
        self.scale, self.best, self.bad_epochs = 1.0, None, 0
        self.metric = cfg.SOLVER.PLATEAU_METRIC

    def after_warmup(self, epoch: int) -> float:
        return max(self.base_lr * self.scale, self.cfg.SOLVER.MIN_LR)

    def observe(self, metrics: dict) -> None:
        value = metrics[self.metric]
        if improves(self.metric, value, self.best):
            self.best, self.bad_epochs = value, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs > self.cfg.SOLVER.PLATEAU_PATIENCE:
            self.scale *= self.cfg.SOLVER.PLATEAU_FACTOR
            self.bad_epochs = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.best, self.bad_epochs = state["scale"], state["best"], state["bad_epochs"]


def build_scheduler(cfg: CfgNode) -> EpochSchedule:
    return SCHEDULERS.get(cfg.SOLVER.SCHEDULER)(cfg)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
