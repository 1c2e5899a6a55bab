"""Config validation at load time: names that exist and values in range, or a ConfigError naming them."""

from __future__ import annotations

from yacs.config import CfgNode

from kdlab.errors import ConfigError
from kdlab.registry import closest_names

# Model names of the reference code that configs may name but kdlab does not build yet.
MODELS_NOT_YET_IMPLEMENTED = ("MobileNetV1",)
TRAINERS = ("base", "aug", "ours", "crd", "dot")


def _check_name(key: str, value: str, valid: list[str], extra_ok: tuple = ()) -> None:
    if value in valid or value in extra_ok:
        return
    near = closest_names(value, valid)
    hint = f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""
    raise ConfigError(f"{key}: unknown name {value!r}{hint}")


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def validate_cfg(cfg: CfgNode) -> None:
    """Raise ConfigError for an unknown model/method/dataset/optimizer/scheduler or an out-of-range value."""
    from kdlab.data import DATASETS
    from kdlab.data.build import NOT_YET_IMPLEMENTED as DATASETS_NYI
    from kdlab.distillers import known_methods
    from kdlab.engine.optim import OPTIMIZERS, SCHEDULERS
    from kdlab.models import MODELS
    from kdlab.models.build import IMAGENET_ALIASES

    _check_name("DATASET.TYPE", cfg.DATASET.TYPE, DATASETS.names(), DATASETS_NYI)
    _check_name("DISTILLER.TYPE", cfg.DISTILLER.TYPE, known_methods())
    model_names = MODELS.names()
    ok_models = MODELS_NOT_YET_IMPLEMENTED + tuple(IMAGENET_ALIASES)
    _check_name("DISTILLER.STUDENT", cfg.DISTILLER.STUDENT, model_names, ok_models)
    if cfg.DISTILLER.TYPE != "NONE":
        _check_name("DISTILLER.TEACHER", cfg.DISTILLER.TEACHER, model_names, ok_models)
    _check_name("SOLVER.TYPE", cfg.SOLVER.TYPE, OPTIMIZERS.names())
    _check_name("SOLVER.SCHEDULER", cfg.SOLVER.SCHEDULER, SCHEDULERS.names())
    _check_name("SOLVER.TRAINER", cfg.SOLVER.TRAINER, list(TRAINERS))
    _check_name("SOLVER.AMP_DTYPE", cfg.SOLVER.AMP_DTYPE, ["bfloat16", "float16"])
    _check_name("SOLVER.PLATEAU_METRIC", cfg.SOLVER.PLATEAU_METRIC, ["test_acc", "test_loss"])
    _check_name("CONKD.SUPCON_VARIANT", cfg.CONKD.SUPCON_VARIANT, ["khosla", "seed"])

    _positive("SOLVER.LR", cfg.SOLVER.LR)
    _positive("SOLVER.BATCH_SIZE", cfg.SOLVER.BATCH_SIZE)
    _positive("SOLVER.EPOCHS", cfg.SOLVER.EPOCHS)
    _positive("DATASET.TEST.BATCH_SIZE", cfg.DATASET.TEST.BATCH_SIZE)
    _positive("DATASET.NUM_WORKERS", cfg.DATASET.NUM_WORKERS, allow_zero=True)
    _positive("SOLVER.WEIGHT_DECAY", cfg.SOLVER.WEIGHT_DECAY, allow_zero=True)
    _positive("SOLVER.MOMENTUM", cfg.SOLVER.MOMENTUM, allow_zero=True)
    _positive("SOLVER.LR_DECAY_RATE", cfg.SOLVER.LR_DECAY_RATE)
    _positive("SOLVER.WARMUP_EPOCHS", cfg.SOLVER.WARMUP_EPOCHS, allow_zero=True)
    _positive("SOLVER.GRAD_CLIP", cfg.SOLVER.GRAD_CLIP, allow_zero=True)
    _positive("SOLVER.EARLY_STOP_PATIENCE", cfg.SOLVER.EARLY_STOP_PATIENCE, allow_zero=True)
    _positive("LOG.SAVE_CHECKPOINT_FREQ", cfg.LOG.SAVE_CHECKPOINT_FREQ, allow_zero=True)
    _positive("LOG.TENSORBOARD_FREQ", cfg.LOG.TENSORBOARD_FREQ)
    _positive("KD.TEMPERATURE", cfg.KD.TEMPERATURE)
    _positive("DKD.T", cfg.DKD.T)
    _positive("DKD.WARMUP", cfg.DKD.WARMUP, allow_zero=True)
    _positive("CONKD.TEMPERATURE", cfg.CONKD.TEMPERATURE)
    _positive("CONKD.SUPCON_TEMPERATURE", cfg.CONKD.SUPCON_TEMPERATURE)
    if list(cfg.SOLVER.LR_DECAY_STAGES) != sorted(cfg.SOLVER.LR_DECAY_STAGES):
        raise ConfigError(f"SOLVER.LR_DECAY_STAGES must be increasing epochs, got {list(cfg.SOLVER.LR_DECAY_STAGES)}")
    if not (0.0 <= cfg.DISTILLER.MODEL_KWARGS.DROPOUT < 1.0):
        raise ConfigError(f"DISTILLER.MODEL_KWARGS.DROPOUT must be in [0, 1), got {cfg.DISTILLER.MODEL_KWARGS.DROPOUT}")
    if cfg.SOLVER.DEVICE not in ("auto", "cpu", "cuda") and not cfg.SOLVER.DEVICE.startswith("cuda:"):
        raise ConfigError(f"SOLVER.DEVICE must be auto, cpu, cuda or cuda:N, got {cfg.SOLVER.DEVICE!r}")
    for key in ("AMP", "CHANNELS_LAST"):
        if not (isinstance(cfg.SOLVER[key], bool) or cfg.SOLVER[key] == "auto"):
            raise ConfigError(f"SOLVER.{key} must be True, False or auto, got {cfg.SOLVER[key]!r}")
    if cfg.SOLVER.AMP is True and cfg.SOLVER.AMP_DTYPE == "float16" and cfg.SOLVER.DEVICE == "cpu":
        raise ConfigError("SOLVER.AMP_DTYPE float16 needs CUDA; use bfloat16 on CPU")
