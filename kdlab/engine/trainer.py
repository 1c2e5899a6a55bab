"""One Trainer for every method: epoch loop, AMP, exact resume, logging (checkpoints and the summary:
kdlab.engine.trainer_state; RNG and autocast helpers: kdlab.engine.step_utils).

Determinism: at the start of epoch e the global RNGs are seeded from (SEED, e), the data
order is a permutation seeded from (SEED, e) and each sample's augmentation is seeded from
(SEED, e, index), so a run resumed from any checkpoint repeats exactly what an
uninterrupted run does (bit-identical on CPU).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Optional

import torch
import torch.nn as nn
from yacs.config import CfgNode

from kdlab import distributed as dist_utils
from kdlab.data.sampling import mix_seed
from kdlab.engine import dot
from kdlab.engine.loggers import RunLogger
from kdlab.engine.optim import build_optimizer, build_scheduler, improves, set_lr, weight_decay_groups
from kdlab.engine.step_utils import _reported, _to_device, autocast_context, seed_everything, set_rng_state
from kdlab.engine.teacher_cache_run import batch_views
from kdlab.engine.trainer_state import TrainerState
from kdlab.errors import NonFiniteLossError
from kdlab.evaluation.metrics import correct_and_count, evaluate, evaluate_segmentation, mean_loss

log = logging.getLogger("kdlab")

# Under DDP the ranks agree on a Ctrl-C/SIGTERM stop only every this many steps (and at logging
# intervals and epoch ends): the agreement is a collective plus a host sync, too dear for every step.
STOP_CHECK_EVERY = 20


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after Ctrl-C once a resumable checkpoint has been written."""


class Trainer(TrainerState):
    """Trains `distiller` on the loaders; writes everything into `run_dir` (rank 0 only)."""

    def __init__(
        self,
        cfg: CfgNode,
        distiller: nn.Module,
        train_loader,
        val_loader,
        run_dir: str,
        device: torch.device,
        model: Optional[nn.Module] = None,
        facts: Optional[dict] = None,
        teacher_cache=None,
    ) -> None:
        self.cfg, self.distiller, self.device = cfg, distiller, device
        # kdlab.data.teacher_cache.TeacherCache: the teacher's logits are looked up, not computed (training only)
        self.teacher_cache = teacher_cache
        self.train_loader, self.val_loader = train_loader, val_loader
        # DATASET.VAL_SPLIT: val_loader holds the held-out training images (selection), this the test split
        self.test_loader = getattr(val_loader, "test_loader", None)
        self.run_dir = run_dir
        self.model = model if model is not None else distiller  # DDP-wrapped in distributed runs
        self.facts = dict(facts or {})  # e.g. student MACs, input size: copied into metrics.json
        splits = getattr(train_loader, "splits", None)
        self.num_classes = splits.num_classes if splits is not None else None
        # segmentation: train_acc is pixel accuracy and test_acc the mIoU (best/early stop/plateau follow it)
        self.task = splits.task if splits is not None else "classification"
        self.train_batch_transform = splits.train_batch_transform if splits is not None else None
        self.val_batch_transform = splits.val_batch_transform if splits is not None else None
        self.channels_last = cfg.SOLVER.CHANNELS_LAST
        # the non-finite check costs a device sync on CUDA: there it runs every logging interval
        self.check_finite_every_step = device.type == "cpu"
        params = distiller.learnable_parameters()
        if cfg.SOLVER.NO_DECAY_1D:  # biases, norms, tokens without weight decay (kdlab.engine.optim)
            learnable = {id(p) for p in params}
            params = weight_decay_groups(
                ((n, p) for n, p in distiller.named_parameters() if id(p) in learnable), cfg.SOLVER.WEIGHT_DECAY)
        self.optimizer = build_optimizer(params, cfg)  # DOT's under SOLVER.TRAINER dot
        self.dot = cfg.SOLVER.TRAINER == "dot"
        self.scheduler = build_scheduler(cfg)
        self.autocast = autocast_context(cfg, device)
        use_scaler = cfg.SOLVER.AMP and cfg.SOLVER.AMP_DTYPE == "float16"
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        self.is_main = dist_utils.is_main()
        self._config_text = cfg.dump()  # saved in every checkpoint (resume compares with it)
        self.logger = RunLogger(cfg, run_dir, enabled=self.is_main)
        self.epoch = 0  # last completed epoch
        self.global_step = 0
        self.best_acc, self.best_epoch = -1.0, 0  # best_acc: the selection split's test_acc at best_epoch
        self.best_score: Optional[float] = None  # SOLVER.SELECT_METRIC's value at best_epoch
        self.bad_epochs = 0
        self.history: list[dict] = []
        self.train_time = 0.0
        self._resume_step = 0  # batches of the current epoch already done (mid-epoch resume)
        self._partial: Optional[dict] = None
        self.stop_requested = False  # set by a SIGINT/SIGTERM handler; checked between steps
        self._bad_at: Optional[torch.Tensor] = None  # (epoch, step) of the first non-finite loss
        self._bad_terms: Optional[torch.Tensor] = None
        self._bad_names: list[str] = []

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict:
        """Train until SOLVER.EPOCHS (or early stop); return the final metrics summary."""
        epochs = self.cfg.SOLVER.EPOCHS
        try:
            while self.epoch < epochs:
                if self._early_stop():
                    log.info("early stop: no better %s for %d epochs", self._selection_name(), self.bad_epochs)
                    break
                self.train_epoch(self.epoch + 1)
                if self.epoch < epochs and self._agree_to_stop(force=True):  # e.g. Ctrl-C during evaluation
                    log.warning("interrupted after epoch %d; its checkpoint is saved (use --resume)", self.epoch)
                    raise TrainingInterrupted(f"interrupted after epoch {self.epoch}")
            if dist_utils.is_distributed():
                agree = dist_utils.replicas_agree(self.distiller.student, self.device)
                log.info("student weights identical on all %d ranks: %s", dist_utils.world_size(),
                         "yes" if agree else "NO")
        finally:
            self.logger.close()
        return self.summary()

    def _selection_name(self) -> str:
        metric = self.cfg.SOLVER.SELECT_METRIC
        return "val_" + metric[len("test_"):] if self.test_loader is not None else metric

    def _early_stop(self) -> bool:
        patience = self.cfg.SOLVER.EARLY_STOP_PATIENCE
        return bool(patience) and self.bad_epochs >= patience

    def _begin_epoch(self, epoch: int) -> None:
        seed_everything(mix_seed(self.cfg.EXPERIMENT.SEED, epoch, 1))
        start = self._resume_step * self.train_loader.batch_size
        self.train_loader.sampler.set_epoch(epoch, start=start)
        if hasattr(self.train_loader.dataset, "set_epoch"):
            self.train_loader.dataset.set_epoch(epoch)
        if self._resume_step and self._resume_rng is not None:
            set_rng_state(self._resume_rng)

    def train_epoch(self, epoch: int) -> dict:
        self._begin_epoch(epoch)
        lr = self.scheduler.lr(epoch)
        set_lr(self.optimizer, lr)
        self.distiller.train()
        sums = torch.zeros(4, device=self.device, dtype=torch.float64)  # loss, top1, count, finite
        if self._partial and self.is_main:  # the saved sums are over all ranks: add them back once
            sums += torch.tensor(self._partial["sums"], dtype=torch.float64, device=self.device)
        step0, self._resume_step, self._partial = self._resume_step, 0, None
        t0 = time.perf_counter()
        bar = self.logger.progress(len(self.train_loader), f"epoch {epoch}/{self.cfg.SOLVER.EPOCHS}")
        steps_done = 0
        loss_terms: dict = {}
        max_steps = self.cfg.SOLVER.MAX_STEPS_PER_EPOCH
        for step, batch in enumerate(self.train_loader, start=step0):
            if max_steps and step >= max_steps:
                break
            loss_terms = self.train_step(batch, epoch, step, sums)
            self.global_step += 1
            steps_done += 1
            log_now = self.global_step % max(1, self.cfg.LOG.TENSORBOARD_FREQ) == 0
            if log_now or self.check_finite_every_step:
                self._check_finite()
            if log_now:
                self.logger.scalars({f"train/{k}": v.item() for k, v in loss_terms.items()}, self.global_step)
            bar.update()
            if self._agree_to_stop(force=log_now):
                bar.close()
                self._interrupted(epoch, step + 1, sums, time.perf_counter() - t0)
                raise TrainingInterrupted(f"interrupted at epoch {epoch} step {step + 1}")
        bar.close()
        self.train_time += time.perf_counter() - t0
        self._check_finite()
        dist_utils.all_reduce_sum(sums)
        n = max(sums[2].item(), 1.0)
        train_metrics = {"train_loss": sums[0].item() / n, "train_acc": 100.0 * sums[1].item() / n}
        test_metrics = self.evaluate()  # the selection split: held-out val with DATASET.VAL_SPLIT, else test
        self.scheduler.observe(test_metrics)
        self.epoch = epoch
        scores = _reported(test_metrics)
        if self.test_loader is not None:
            scores = {**{"val_" + k[len("test_"):]: v for k, v in scores.items()}, **_reported(self.evaluate(True))}
        record = {"epoch": epoch, "lr": lr, **train_metrics, **scores, "time_s": round(time.perf_counter() - t0, 3)}
        self.history.append(record)
        score = test_metrics[self.cfg.SOLVER.SELECT_METRIC]
        improved = improves(self.cfg.SOLVER.SELECT_METRIC, score, self.best_score)
        if improved:
            self.best_acc, self.best_epoch, self.bad_epochs = test_metrics["test_acc"], epoch, 0
            self.best_score = score
        else:
            self.bad_epochs += 1
        self._save(epoch, improved)
        self._log_epoch(record)
        self.logger.write_metrics(self.summary())
        return record

    def train_step(self, batch, epoch: int, step: int, sums: torch.Tensor) -> dict:
        """One optimization step; accumulates loss/accuracy sums on device (no host sync)."""
        image, target, index, *views = batch  # a 4th item: the view ids of a per-sample augmentation (teacher cache)
        image = _to_device(image, self.device, self.channels_last)
        target = target.to(self.device, non_blocking=True)
        if self.train_batch_transform is not None:
            g = torch.Generator(device=self.device).manual_seed(mix_seed(self.cfg.EXPERIMENT.SEED, epoch, step, 2))
            if self.teacher_cache is not None:
                image, *views = batch_views(self.train_batch_transform, image, g)
            else:
                image = self.train_batch_transform(image, g)
            if self.channels_last:
                image = _to_device(image, self.device, True)
        extras = {}
        if self.teacher_cache is not None:
            extras["teacher_logits"] = self.teacher_cache.lookup(index, views[0], self.device)
        skip_ok = self.cfg.SOLVER.SKIP_NONFINITE
        if skip_ok:  # a skipped batch must not leave its statistics in BatchNorm buffers either
            saved = [(b, b.detach().clone()) for n, b in self.distiller.named_buffers() if not n.startswith("teacher.")]
        with dot.unsynced_forward(self.model, self.distiller) if self.dot else contextlib.nullcontext():
            with self.autocast():
                logits, losses = self.model(image, target, epoch=epoch, index=index, **extras)
        loss = sum(losses.values())
        finite = torch.isfinite(loss.detach())
        self._track_nonfinite(losses, finite, epoch, step)
        if skip_ok and not bool(finite):
            log.warning("epoch %d step %d: non-finite loss (%s), batch skipped", epoch, step, self._terms(losses))
            with torch.no_grad():
                for buf, copy in saved:
                    buf.copy_(copy)
            self.optimizer.zero_grad(set_to_none=True)
            return {k: v.detach() for k, v in losses.items()}
        if self.dot:  # two backward passes, CE and distillation momenta apart
            dot.backward_and_step(self.optimizer, losses, self.scaler, self.cfg.SOLVER.GRAD_CLIP,
                                  ddp=dot.is_ddp(self.model))
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.cfg.SOLVER.GRAD_CLIP > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.distiller.learnable_parameters(), self.cfg.SOLVER.GRAD_CLIP)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        with torch.no_grad():  # counts are samples, or labelled pixels for segmentation
            correct, count = correct_and_count(logits.detach().float(), target)
            sums += torch.stack([loss.detach().double() * count, correct, count, finite.double()])
        return {k: v.detach() for k, v in losses.items()}

    def _agree_to_stop(self, force: bool = False) -> bool:
        """Ctrl-C reaches every rank at a slightly different step: stop where any rank asked to.

        Under DDP the flag is all-reduced only at the same steps on every rank (every
        STOP_CHECK_EVERY global steps, or when forced), so all ranks stop at the same step.
        """
        if not dist_utils.is_distributed():
            return self.stop_requested
        if not force and self.global_step % STOP_CHECK_EVERY:
            return False
        flag = torch.tensor([float(self.stop_requested)], device=self.device)
        self.stop_requested = bool(dist_utils.all_reduce_sum(flag).item() > 0)
        return self.stop_requested

    @staticmethod
    def _terms(losses: dict) -> str:
        return ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())

    def _track_nonfinite(self, losses: dict, finite: torch.Tensor, epoch: int, step: int) -> None:
        """Remember, on device and without a host sync, the first step whose loss was NaN/Inf and its terms."""
        terms = torch.stack([v.detach().float().reshape(()) for v in losses.values()])
        if self._bad_at is None or self._bad_terms.shape != terms.shape:
            self._bad_at = torch.full((2,), -1, dtype=torch.int64, device=terms.device)
            self._bad_terms, self._bad_names = torch.zeros_like(terms), list(losses)
        first = (~finite) & (self._bad_at[0] < 0)
        where = torch.full((2,), epoch, dtype=torch.int64, device=terms.device)  # torch.tensor(list) on CUDA
        where[1] = step  # would be a synchronizing host-to-device copy; fills are not
        self._bad_at = torch.where(first, where, self._bad_at)
        self._bad_terms = torch.where(first, terms, self._bad_terms)

    def _check_finite(self) -> None:
        """Stop with a message naming the step and the loss term if a non-finite loss was seen."""
        if self.cfg.SOLVER.SKIP_NONFINITE or self._bad_at is None:
            return
        epoch, step = self._bad_at.tolist()
        if epoch < 0:
            return
        values = self._bad_terms.tolist()
        terms = ", ".join(f"{n}={v:.4g}" for n, v in zip(self._bad_names, values))
        bad = next((n for n, v in zip(self._bad_names, values) if not math.isfinite(v)), self._bad_names[0])
        raise NonFiniteLossError(
            f"non-finite loss at epoch {epoch} step {step} ({terms}); first bad term {bad!r}. "
            "Stopped before saving: the last good checkpoint is kept. Lower SOLVER.LR, set SOLVER.GRAD_CLIP, "
            "or set SOLVER.SKIP_NONFINITE True to skip such batches"
        )

    def evaluate(self, test: bool = False) -> dict:
        """Scores (keys test_*) on the selection split, or with test=True on the test split of a VAL_SPLIT run."""
        self.distiller.eval()
        vt = self.val_batch_transform
        score = evaluate_segmentation if self.task == "segmentation" else evaluate
        loader = self.test_loader if test else self.val_loader
        transform = ((lambda x: _to_device(vt(x), self.device, self.channels_last)) if vt
                     else (lambda x: _to_device(x, self.device, self.channels_last)))
        out = score(self.distiller.forward_test, loader, self.device, self.num_classes or 1,
                    batch_transform=transform, autocast=self.autocast)
        if self.distiller.held_out_objective:  # no classifier is trained: the loss is the method's objective
            out["test_loss"] = mean_loss(self.distiller.held_out_loss, loader, self.device, transform, self.autocast)
        return out

    def _log_epoch(self, record: dict) -> None:
        if self.is_main and "val_acc" in record:
            log.info("epoch %d held-out val: loss %.4f %s %.2f (%s selects the best checkpoint)", record["epoch"],
                     record["val_loss"], "mIoU" if self.task == "segmentation" else "top1", record["val_acc"],
                     self._selection_name())
        if self.task != "segmentation":
            self.logger.epoch(record, self.best_acc)
            return
        # RunLogger.epoch's line speaks of top-1/top-5; a segmentation epoch reports mIoU and pixel accuracy.
        self.logger.scalars({f"epoch/{k}": v for k, v in record.items() if k != "epoch"}, record["epoch"])
        if self.is_main:
            log.info("epoch %d/%d lr %.4g | train loss %.4f pixel acc %.2f | test loss %.4f mIoU %.2f pixel acc %.2f"
                     " | best mIoU %.2f | %.1fs", record["epoch"], self.cfg.SOLVER.EPOCHS, record["lr"],
                     record["train_loss"], record["train_acc"], record["test_loss"], record["test_acc"],
                     record["test_pixel_acc"], self.best_acc, record["time_s"])

