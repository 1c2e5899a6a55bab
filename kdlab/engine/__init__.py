"""Engine: trainer, optimizers, schedules, checkpoint I/O, metrics, loggers, distributed helpers."""

from kdlab.engine.optim import OPTIMIZERS, SCHEDULERS, build_optimizer, build_scheduler
from kdlab.engine.trainer import Trainer, TrainingInterrupted

__all__ = ["OPTIMIZERS", "SCHEDULERS", "Trainer", "TrainingInterrupted", "build_optimizer", "build_scheduler"]
