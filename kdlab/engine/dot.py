"""DOT, the distillation-oriented trainer (Zhao et al. ICCV 2023), as mdistiller implements it.

SOLVER.TRAINER dot: the task (CE) and distillation (KD) losses get separate momentum buffers,
m_task = SOLVER.MOMENTUM - SOLVER.DOT.DELTA and m_kd = SOLVER.MOMENTUM + SOLVER.DOT.DELTA
(mdistiller's engine/trainer.py `DOT.init_optimizer`; SGD only, as there). Each step runs two
backward passes through one forward, in the reference's order: the KD loss (retain_graph), its
gradients stashed by `step_kd`, then the CE loss and `step`, which updates each parameter with its
CE momentum buffer and then with its KD one (`dot` below is mdistiller's engine/dot.py line for
line, so the update is the same to the last bit). CE is the method's "loss_ce" term; KD is the sum
of its other terms (mdistiller's trainer takes "loss_kd", its distillers' only other term).

With DELTA 0 the two buffers add up to plain SGD's single buffer: DOT is SGD (momentum, weight
decay, no dampening, no Nesterov) on loss_ce + the other terms, up to rounding. Reference quirks kept:
a parameter with a KD gradient only (a connector of a feature method) gets no weight decay at its
first step and the mean of the two momenta after it; one with a CE gradient only gets the mean too.

What kdlab adds around it (mdistiller has none of these): fp16 GradScaler (both gradients are
unscaled; a non-finite KD gradient skips the step like a non-finite CE one), SOLVER.GRAD_CLIP
(both gradients scaled by one factor, from the norm of their sum, so DELTA 0 still equals SGD's
clipping) and DDP (the forward runs under `no_sync`; each gradient is averaged over the ranks by
one all-reduce and the student's buffers are broadcast from rank 0 before each forward, as DDP does).
Both buffers are optimizer state (`momentum_buffer`, `momentum_kd_buffer`, mdistiller's names):
checkpoints hold them and --resume restores them.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor
from yacs.config import CfgNode

from kdlab.errors import ConfigError


def dot(params: list[Tensor], d_p_list: list[Tensor], momentum_buffer_list: list, kd_grad_buffer: list[Tensor],
        kd_momentum_buffer: list, kd_params: list[Tensor], *, weight_decay: float, momentum: float,
        momentum_kd: float, lr: float, dampening: float) -> None:
    """mdistiller's `dot` (engine/dot.py): the CE update of `params`, then the KD update of `kd_params`."""
    kd_ids, ce_ids = {id(p) for p in kd_params}, {id(p) for p in params}
    for i, param in enumerate(params):
        d_p = d_p_list[i]
        if weight_decay != 0:
            d_p = d_p.add(param, alpha=weight_decay)
        if momentum != 0:
            buf = momentum_buffer_list[i]
            if buf is None:
                buf = torch.clone(d_p).detach()
                momentum_buffer_list[i] = buf
            elif id(param) in kd_ids:
                buf.mul_(momentum).add_(d_p, alpha=1 - dampening)
            else:
                buf.mul_((momentum_kd + momentum) / 2.0).add_(d_p, alpha=1 - dampening)
            d_p = buf
        param.add_(d_p, alpha=-lr)
    for i, (d_p, buf, p) in enumerate(zip(kd_grad_buffer, kd_momentum_buffer, kd_params)):
        if buf is None:  # the reference's first KD step: no weight decay, whichever branch follows later
            buf = torch.clone(d_p).detach()
            kd_momentum_buffer[i] = buf
        elif id(p) in ce_ids:
            buf.mul_(momentum_kd).add_(d_p, alpha=1 - dampening)
        else:
            if weight_decay != 0:
                d_p = d_p.add(p, alpha=weight_decay)
            buf.mul_((momentum_kd + momentum) / 2.0).add_(d_p, alpha=1 - dampening)
        p.add_(buf, alpha=-lr)


class DistillationOrientedTrainer(torch.optim.Optimizer):
    """mdistiller's DistillationOrientedTrainer: SGD with separate CE and KD momentum buffers (one param group).

    Usage (as mdistiller's DOT trainer): zero_grad(set_to_none=True); loss_kd.backward(retain_graph=True);
    step_kd(); zero_grad(set_to_none=True); loss_ce.backward(); step().
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, momentum_kd: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0) -> None:
        for name, value in (("lr", lr), ("momentum", momentum), ("momentum_kd", momentum_kd),
                            ("weight_decay", weight_decay)):
            if value < 0.0:
                raise ValueError(f"invalid {name} {value!r}: must be >= 0")
        defaults = dict(lr=lr, momentum=momentum, momentum_kd=momentum_kd, dampening=dampening,
                        weight_decay=weight_decay)
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("DistillationOrientedTrainer takes one parameter group (as mdistiller's)")
        self.discard_kd()

    def discard_kd(self) -> None:
        """Forget stashed KD gradients (after a step, or when a step is skipped)."""
        self.kd_grad_buffer: list[Tensor] = []
        self.kd_grad_params: list[Tensor] = []
        self.kd_momentum_buffer: list = []

    @torch.no_grad()
    def step_kd(self) -> None:
        """Stash the current gradients (those of the KD loss) and their parameters' KD momentum buffers."""
        params = [p for p in self.param_groups[0]["params"] if p.grad is not None]
        self.kd_grad_params = params
        self.kd_grad_buffer = [p.grad for p in params]
        self.kd_momentum_buffer = [self.state[p].get("momentum_kd_buffer") for p in params]

    @torch.no_grad()
    def step(self, closure=None):
        """Update with the current gradients (the CE loss's) and the stashed KD gradients."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        params = [p for p in group["params"] if p.grad is not None]
        buffers = [self.state[p].get("momentum_buffer") for p in params]
        dot(params, [p.grad for p in params], buffers, self.kd_grad_buffer, self.kd_momentum_buffer,
            self.kd_grad_params, weight_decay=group["weight_decay"], momentum=group["momentum"],
            momentum_kd=group["momentum_kd"], lr=group["lr"], dampening=group["dampening"])
        for p, buf in zip(params, buffers):
            self.state[p]["momentum_buffer"] = buf
        for p, buf in zip(self.kd_grad_params, self.kd_momentum_buffer):
            self.state[p]["momentum_kd_buffer"] = buf
        self.discard_kd()
        return loss


def build_dot_optimizer(params, cfg: CfgNode) -> DistillationOrientedTrainer:
    """mdistiller's DOT.init_optimizer: momenta MOMENTUM -/+ DOT.DELTA, no dampening."""
    delta = cfg.SOLVER.DOT.DELTA
    return DistillationOrientedTrainer(params, lr=cfg.SOLVER.LR, momentum=cfg.SOLVER.MOMENTUM - delta,
                                       momentum_kd=cfg.SOLVER.MOMENTUM + delta,
                                       weight_decay=cfg.SOLVER.WEIGHT_DECAY)


def check_config(cfg: CfgNode, method) -> None:
    """SOLVER.TRAINER dot: the settings mdistiller's DOT trainer takes, or a ConfigError naming the key."""
    solver = cfg.SOLVER
    if solver.TYPE != "SGD":
        raise ConfigError(f"SOLVER.TRAINER dot is an SGD variant (mdistiller's DOT supports SGD only); "
                          f"SOLVER.TYPE {solver.TYPE!r} would be ignored: set SOLVER.TYPE SGD")
    if solver.NESTEROV:
        raise ConfigError("SOLVER.TRAINER dot has no Nesterov momentum (as mdistiller's); set SOLVER.NESTEROV False")
    for name, value in (("MOMENTUM - DOT.DELTA (task momentum)", solver.MOMENTUM - solver.DOT.DELTA),
                        ("MOMENTUM + DOT.DELTA (distillation momentum)", solver.MOMENTUM + solver.DOT.DELTA)):
        if value < 0:
            raise ConfigError(f"SOLVER.DOT.DELTA {solver.DOT.DELTA}: SOLVER.{name} is {value:.4g}, must be >= 0")
    if method is not None and not method.needs_teacher:
        raise ConfigError(f"SOLVER.TRAINER dot separates the CE and distillation gradients; DISTILLER.TYPE "
                          f"{cfg.DISTILLER.TYPE!r} has no distillation term: use SOLVER.TRAINER base")


def split_losses(losses: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(CE, KD): the "loss_ce" term and the sum of the others."""
    others = [v for k, v in losses.items() if k != "loss_ce"]
    if "loss_ce" not in losses or not others:
        raise ConfigError(f"SOLVER.TRAINER dot needs a loss_ce term and a distillation term; the method "
                          f"returned {sorted(losses)}: use SOLVER.TRAINER base")
    return losses["loss_ce"], sum(others)


def is_ddp(model: nn.Module) -> bool:
    return isinstance(model, nn.parallel.DistributedDataParallel)


@contextlib.contextmanager
def unsynced_forward(model: nn.Module, distiller: nn.Module) -> Iterator[None]:
    """Under DDP: the forward without DDP's gradient hooks (DOT reduces its two gradients itself).

    DDP skips its buffer broadcast in the forward after a no_sync one, so the trainable parts'
    buffers (BatchNorm statistics) are broadcast from rank 0 here, as DDP would.
    """
    if not is_ddp(model):
        yield
        return
    buffers = [b for n, b in distiller.named_buffers() if not n.startswith("teacher.")]
    if buffers:
        flat = torch._utils._flatten_dense_tensors([b.detach() for b in buffers])
        dist.broadcast(flat, src=0)
        with torch.no_grad():
            for b, synced in zip(buffers, torch._utils._unflatten_dense_tensors(flat, buffers)):
                b.copy_(synced)
    with model.no_sync():
        yield


def _average_gradients(params: list[Tensor]) -> None:
    """DDP's reduction by hand: every rank's p.grad becomes the mean over the ranks (one all-reduce per dtype)."""
    grads = [p.grad for p in params if p.grad is not None]
    world = dist.get_world_size()
    for dtype in sorted({g.dtype for g in grads}, key=str):
        same = [g for g in grads if g.dtype == dtype]
        flat = torch._utils._flatten_dense_tensors(same).div_(world)
        dist.all_reduce(flat)
        for g, reduced in zip(same, torch._utils._unflatten_dense_tensors(flat, same)):
            g.copy_(reduced)


def _clip(optimizer: DistillationOrientedTrainer, max_norm: float) -> None:
    """Scale the CE and KD gradients by one factor: max_norm / ||CE + KD|| (at most 1), as clip_grad_norm_."""
    ce = {id(p): p.grad for p in optimizer.param_groups[0]["params"] if p.grad is not None}
    kd = {id(p): g for p, g in zip(optimizer.kd_grad_params, optimizer.kd_grad_buffer)}
    total = [ce[k] + kd[k] if k in ce and k in kd else ce.get(k, kd.get(k)) for k in {**ce, **kd}]
    norm = torch.nn.utils.get_total_norm(total)
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for g in [*ce.values(), *kd.values()]:
        g.mul_(coef.to(g.device))


def _all_finite(grads: list[Tensor]) -> bool:
    return bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)).item()) if grads else True


def backward_and_step(optimizer: DistillationOrientedTrainer, losses: dict[str, Tensor],
                      scaler: torch.amp.GradScaler, grad_clip: float = 0.0, ddp: bool = False) -> None:
    """One DOT update from a forward's loss dict (mdistiller's DOT.train_iter, plus AMP, clipping, DDP)."""
    loss_ce, loss_kd = split_losses(losses)
    params = optimizer.param_groups[0]["params"]
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss_kd).backward(retain_graph=True)
    if ddp:
        _average_gradients(params)
    if scaler.is_enabled():  # unscaled in place; found_inf is recorded for scaler.update()
        scaler.unscale_(types.SimpleNamespace(param_groups=optimizer.param_groups))
    optimizer.step_kd()
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss_ce).backward()
    if ddp:
        _average_gradients(params)
    if scaler.is_enabled() and not _all_finite(optimizer.kd_grad_buffer):
        optimizer.discard_kd()  # skipped, as GradScaler skips a step with non-finite gradients
        optimizer.zero_grad(set_to_none=True)
        scaler.update()
        return
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        _clip(optimizer, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.discard_kd()
