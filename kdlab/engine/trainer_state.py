"""The trainer's state: checkpoints (state_dict / load_state_dict), the files a run saves, the resumable
checkpoint written on Ctrl-C, and the run summary (metrics.json). A mixin of kdlab.engine.trainer.Trainer."""

from __future__ import annotations

import logging
import os
from typing import Optional

import torch

from kdlab import distributed as dist_utils
from kdlab.engine.checkpoint import FORMAT, FORMAT_VERSION, atomic_save
from kdlab.engine.step_utils import rng_state
from kdlab.errors import CheckpointError, NonFiniteLossError

log = logging.getLogger("kdlab")


class TrainerState:
    """state_dict / load_state_dict, saving and the summary of a Trainer (its attributes are the Trainer's)."""

    # ------------------------------------------------------------------ state
    def state_dict(self, step_in_epoch: int = 0, partial: Optional[dict] = None) -> dict:
        distiller_state = {k: v for k, v in self.distiller.state_dict().items() if not k.startswith("teacher.")}
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "epoch": self.epoch,
            "step_in_epoch": step_in_epoch,
            "partial": partial,
            "global_step": self.global_step,
            "model": distiller_state,
            "student": self.distiller.student.state_dict(),
            "arch": self.cfg.DISTILLER.STUDENT,
            "num_classes": self.num_classes,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "best_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "best_score": self.best_score,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "train_time": self.train_time,
            "config": self._config_text,
            "precision": self.facts.get("precision"),  # how SOLVER.AMP / CHANNELS_LAST were chosen
        }

    def load_state_dict(self, state: dict) -> None:
        missing = self.distiller.load_state_dict(state["model"], strict=False)
        bad = [k for k in missing.missing_keys if not k.startswith("teacher.")] + list(missing.unexpected_keys)
        if bad:
            raise CheckpointError(f"checkpoint does not fit this run's model: key {bad[0]!r}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.global_step = state["epoch"], state["global_step"]
        self.best_acc, self.best_epoch = state["best_acc"], state["best_epoch"]
        self.bad_epochs = state.get("bad_epochs", 0)
        self.best_score = state.get("best_score", state["best_acc"] if state["best_epoch"] else None)
        self.history, self.train_time = list(state["history"]), state["train_time"]
        self._resume_step, self._partial = state.get("step_in_epoch", 0), state.get("partial")
        self._resume_rng = state["rng"] if self._resume_step else None

    # ------------------------------------------------------------------ saving
    def _student_file(self) -> dict:
        """The student's weights, and the method's own trained modules (e.g. a projection head) under "extra";
        "classifier": the CLASSIFIER head it was built with (tools/eval.py -m MODEL rebuilds it)."""
        extra = {k: v for k, v in self.distiller.state_dict().items() if not k.startswith(("student.", "teacher."))}
        c = self.cfg.CLASSIFIER
        head = {"HIDDEN": [int(w) for w in c.HIDDEN], "BATCHNORM": bool(c.BATCHNORM), "DROPOUT": float(c.DROPOUT)}
        return {"format": "kdlab-student", "model": self.distiller.student.state_dict(), "extra": extra,
                "arch": self.cfg.DISTILLER.STUDENT, "num_classes": self.num_classes, "epoch": self.epoch,
                "classifier": head}

    def _save(self, epoch: int, improved: bool) -> None:
        if not self.is_main:
            return
        state = self.state_dict()
        path = lambda name: os.path.join(self.run_dir, name)  # noqa: E731
        atomic_save(state, path("latest"))
        atomic_save(self._student_file(), path("student_latest"))
        if improved:
            atomic_save(state, path("best"))
            atomic_save(self._student_file(), path("student_best"))
        freq = self.cfg.LOG.SAVE_CHECKPOINT_FREQ
        if freq and epoch % freq == 0:
            atomic_save(state, path(f"epoch_{epoch}"))
            atomic_save(self._student_file(), path(f"student_{epoch}"))

    def _interrupted(self, epoch: int, done: int, sums: torch.Tensor, elapsed: float) -> None:
        """Ctrl-C: save a resumable mid-epoch checkpoint after the last complete step.

        A non-finite loss seen on any rank since the last check stops the run instead, so that
        `latest` is never replaced by NaN weights. The partial sums saved are those of all ranks.
        """
        bad = self._bad_at is not None and not self.cfg.SOLVER.SKIP_NONFINITE
        flag = (self._bad_at[:1] >= 0).double() if bad else torch.zeros(1, dtype=torch.float64, device=self.device)
        packed = dist_utils.all_reduce_sum(torch.cat([sums, flag.to(sums.device)]))
        self._check_finite()  # the rank that saw it raises with the step and the loss term
        if packed[4].item() > 0:
            raise NonFiniteLossError("non-finite loss on another rank; stopped before saving: "
                                     "the last good checkpoint is kept")
        if not self.is_main:
            return
        self.train_time += elapsed
        state = self.state_dict(step_in_epoch=done, partial={"sums": packed[:4].cpu().tolist(), "steps": done})
        atomic_save(state, os.path.join(self.run_dir, "latest"))
        log.warning("interrupted at epoch %d step %d; resumable checkpoint saved (use --resume)", epoch, done)

    def summary(self) -> dict:
        last = self.history[-1] if self.history else {}
        held_out = {}
        if self.test_loader is not None:  # best_acc: the test accuracy of the epoch the held-out split chose
            at_best = next((h for h in self.history if h["epoch"] == self.best_epoch), {})
            held_out = {"selection": "val", "best_val_acc": self.best_acc if self.history else None,
                        "last_val_acc": last.get("val_acc"), "best_acc": at_best.get("test_acc")}
        return {
            "best_acc": self.best_acc if self.history else None,
            **held_out,
            "best_epoch": self.best_epoch,
            "select_metric": self._selection_name(),  # picks best_epoch (and stops early)
            "best_score": self.best_score,
            "last_acc": last.get("test_acc"),
            "last_acc_top5": last.get("test_acc_top5"),
            "last_epoch": self.epoch,
            "epochs": self.cfg.SOLVER.EPOCHS,
            "train_time_s": round(self.train_time, 3),
            "method": self.cfg.DISTILLER.TYPE,
            "teacher": self.cfg.DISTILLER.TEACHER if self.distiller.teacher is not None else None,
            "student": self.cfg.DISTILLER.STUDENT,
            "dataset": self.cfg.DATASET.TYPE,
            "task": self.task,  # segmentation: the *_acc values are mIoU (test) and pixel accuracy (train)
            "logit_stand": bool(self.cfg.EXPERIMENT.LOGIT_STAND),
            "seed": self.cfg.EXPERIMENT.SEED,
            "student_params": sum(p.numel() for p in self.distiller.student.parameters()),
            "extra_params": self.distiller.extra_parameter_count(),
            **self.facts,
            "history": self.history,
        }
