"""Run outputs: console/worklog logging, TensorBoard (and, with LOG.WANDB, W&B) scalars, tqdm progress, metrics.json."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from yacs.config import CfgNode

log = logging.getLogger("kdlab")


def setup_logging(level: int = logging.INFO) -> None:
    """One console handler for the 'kdlab' logger (idempotent)."""
    if any(getattr(h, "_kdlab", False) for h in log.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(message)s", "%H:%M:%S"))
    handler._kdlab = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    # under torchrun only rank 0 reports progress; other ranks still show warnings and errors
    log.setLevel(level if int(os.environ.get("RANK", "0")) == 0 else max(level, logging.WARNING))
    log.propagate = False


def add_file_handler(path: str) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    log.addHandler(handler)
    return handler


class _NullBar:
    def update(self, n: int = 1) -> None: ...
    def close(self) -> None: ...


def start_wandb(cfg: CfgNode, run_dir: str):
    """A Weights & Biases run named like the run directory, holding the resolved config.

    Its files go to $WANDB_DIR if set, else into the run directory; WANDB_MODE=offline works without network.
    """
    try:
        import wandb
    except ImportError:
        from kdlab.errors import ConfigError

        raise ConfigError("LOG.WANDB True needs the wandb package: pip install wandb "
                          "(or set LOG.WANDB False)") from None
    import yaml

    from kdlab.config import run_name

    run = wandb.init(project=cfg.EXPERIMENT.PROJECT, name=run_name(cfg), config=yaml.safe_load(cfg.dump()),
                     dir=os.environ.get("WANDB_DIR") or run_dir, settings=wandb.Settings(console="off"))
    # per-step scalars on the global step, per-epoch ones on the epoch, as in TensorBoard
    run.define_metric("global_step")
    run.define_metric("epoch")
    run.define_metric("train/*", step_metric="global_step")
    run.define_metric("epoch/*", step_metric="epoch")
    return run


class RunLogger:
    """Everything a run writes besides checkpoints; a no-op on ranks other than 0."""

    def __init__(self, cfg: CfgNode, run_dir: str, enabled: bool = True) -> None:
        self.cfg, self.run_dir, self.enabled = cfg, run_dir, enabled
        self._tb = None
        self._file_handler = None
        self._wandb = None
        if enabled:
            os.makedirs(run_dir, exist_ok=True)
            self._file_handler = add_file_handler(os.path.join(run_dir, "worklog.txt"))
            if cfg.LOG.WANDB:
                self._wandb = start_wandb(cfg, run_dir)

    @property
    def tb(self):
        if self._tb is None and self.enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(os.path.join(self.run_dir, "tensorboard"))
        return self._tb

    def progress(self, total: int, desc: str):
        if not (self.enabled and self.cfg.LOG.PROGRESS):
            return _NullBar()
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
        if self._wandb is not None and values:
            axis = "epoch" if next(iter(values)).startswith("epoch/") else "global_step"
            self._wandb.log({**values, axis: step})

    def epoch(self, record: dict[str, Any], best_acc: float) -> None:
        if not self.enabled:
            return
        self.scalars({f"epoch/{k}": v for k, v in record.items() if k != "epoch"}, record["epoch"])
        if self.tb is not None:
            self.tb.flush()
        log.info(
            "epoch %d/%d lr %.4g | train loss %.4f acc %.2f | test loss %.4f top1 %.2f top5 %.2f | best %.2f | %.1fs",
            record["epoch"], self.cfg.SOLVER.EPOCHS, record["lr"], record["train_loss"], record["train_acc"],
            record["test_loss"], record["test_acc"], record["test_acc_top5"], best_acc, record["time_s"],
        )

    def write_metrics(self, summary: dict) -> None:
        if not self.enabled:
            return
        path = os.path.join(self.run_dir, "metrics.json")
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
        os.replace(tmp, path)
        if self._wandb is not None:  # best/last accuracy and the run's facts, as in metrics.json
            self._wandb.summary.update({k: v for k, v in summary.items() if k != "history"})

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._file_handler is not None:
            log.removeHandler(self._file_handler)
            self._file_handler.close()
            self._file_handler = None
