"""Config validation at load time: names that exist and values in range, or a ConfigError naming them."""

from __future__ import annotations

import importlib.util

from yacs.config import CfgNode

from kdlab.config import hooks
from kdlab.errors import ConfigError
from kdlab.registry import closest_names

# SOLVER.TRAINER: base (one view), aug/ours (two views, MLKD), dot (mdistiller's DOT; kdlab.engine.dot
# checks its settings through hooks.register_validator), crd: mdistiller's CRD trainer, which only adds
# each sample's index and contrast indices to the batch: in kdlab every batch carries the index and CRD
# draws its contrast indices itself, so crd is the base trainer (and CRD runs under base too).
TRAINERS = ("base", "aug", "ours", "dot", "crd")
TWO_VIEW_TRAINERS = ("aug", "ours")  # the reference code's trainers that feed two views per image
# Keys whose valid names are registered by the packages that own them (kdlab.config.hooks), in checking order.
REGISTERED_NAME_KEYS = (
    "DATASET.TYPE",
    "DISTILLER.TYPE",
    "DISTILLER.STUDENT",
    "DISTILLER.TEACHER",
    "SOLVER.TYPE",
    "SOLVER.SCHEDULER",
)


def _check_name(key: str, value: str, valid: list[str], extra_ok: tuple = ()) -> None:
    if value in valid or value in extra_ok:
        return
    near = closest_names(value, valid)
    hint = f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""
    raise ConfigError(f"{key}: unknown name {value!r}{hint}")


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _check_trainer(cfg: CfgNode, method) -> None:
    trainer = cfg.SOLVER.TRAINER
    _check_name("SOLVER.TRAINER", trainer, list(TRAINERS))
    if trainer in TWO_VIEW_TRAINERS and method is not None and not method.two_views:
        raise ConfigError(
            f"SOLVER.TRAINER {trainer!r} feeds two views per image, which DISTILLER.TYPE "
            f"{cfg.DISTILLER.TYPE!r} does not take; use SOLVER.TRAINER base (two-view methods get two "
            "views whatever the trainer)"
        )


TEACHER_CACHE_MODES = ("off", "auto", "build")
TEACHER_CACHE_DTYPES = ("float32", "bfloat16")


def _check_teacher_cache(cfg: CfgNode, method) -> None:
    """DISTILLER.TEACHER_CACHE* values; `build` for a method that uses more of its teacher than the logits."""
    node = cfg.DISTILLER
    for key, value, valid in (("TEACHER_CACHE", node.TEACHER_CACHE, TEACHER_CACHE_MODES),
                              ("TEACHER_CACHE_DTYPE", node.TEACHER_CACHE_DTYPE, TEACHER_CACHE_DTYPES)):
        if value not in valid:
            raise ConfigError(f"DISTILLER.{key} {value!r}: use one of {', '.join(valid)}")
    if node.TEACHER_CACHE == "build" and method is not None and not getattr(method, "teacher_logits_only", False):
        raise ConfigError(
            f"DISTILLER.TEACHER_CACHE build: DISTILLER.TYPE {cfg.DISTILLER.TYPE} uses more of its teacher than the "
            "logits of one view (features, or two views), so a teacher-output cache cannot stand in for it; "
            "set DISTILLER.TEACHER_CACHE off or auto")


def _check_wandb(cfg: CfgNode) -> None:
    if cfg.LOG.WANDB and importlib.util.find_spec("wandb") is None:
        raise ConfigError("LOG.WANDB True needs the wandb package: pip install wandb (or set LOG.WANDB False)")


def _check_classifier(node: CfgNode) -> None:
    hidden = list(node.HIDDEN)
    if not all(isinstance(h, int) and h > 0 for h in hidden):
        raise ConfigError(f"CLASSIFIER.HIDDEN must be a list of positive widths (e.g. [128]), got {hidden}")
    if not 0.0 <= node.DROPOUT < 1.0:
        raise ConfigError(f"CLASSIFIER.DROPOUT must be in [0, 1), got {node.DROPOUT}")
    for key, on in (("BATCHNORM", node.BATCHNORM), ("DROPOUT", node.DROPOUT > 0)):
        if on and not hidden:
            raise ConfigError(f"CLASSIFIER.{key} {node[key]} acts after a hidden layer: set CLASSIFIER.HIDDEN "
                              f"(e.g. [128]) or leave CLASSIFIER.{key} at its default")


def validate_cfg(cfg: CfgNode) -> None:
    """Raise ConfigError for an unknown model/method/dataset/optimizer/scheduler or an out-of-range value."""
    method = hooks.method_class(cfg.DISTILLER.TYPE)
    for key in REGISTERED_NAME_KEYS:
        if key == "DISTILLER.TEACHER" and method is not None and not method.needs_teacher:
            continue
        valid = hooks.valid_names(key)
        if valid is not None:
            group, leaf = key.split(".")
            _check_name(key, cfg[group][leaf], *valid)
    _check_trainer(cfg, method)
    _check_teacher_cache(cfg, method)
    _check_name("SOLVER.AMP_DTYPE", cfg.SOLVER.AMP_DTYPE, ["bfloat16", "float16"])
    _check_name("SOLVER.PLATEAU_METRIC", cfg.SOLVER.PLATEAU_METRIC, ["test_acc", "test_loss"])
    _check_name("SOLVER.SELECT_METRIC", cfg.SOLVER.SELECT_METRIC, ["test_acc", "test_loss"])
    _check_name("CONKD.KD_ON", cfg.CONKD.KD_ON, ["logits", "embeddings"])
    _check_classifier(cfg.CLASSIFIER)
    _check_name("CONKD.SUPCON_VARIANT", cfg.CONKD.SUPCON_VARIANT, ["khosla", "seed", "two_view"])
    _check_name("KD.PIXELS", cfg.KD.PIXELS, ["labelled", "all"])
    _check_name("FEATKD.PIXELS", cfg.FEATKD.PIXELS, ["labelled", "all"])
    _check_name("FEATKD.CONNECTOR", cfg.FEATKD.CONNECTOR, ["conv_bn", "conv"])
    for name in cfg.FEATKD.PAIR_LOSSES:
        _check_name("FEATKD.PAIR_LOSSES", name, ["mse", "cosine"])

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
    for check in hooks.validators():
        check(cfg)
    _check_wandb(cfg)
    if cfg.SOLVER.DEVICE not in ("auto", "cpu", "cuda") and not cfg.SOLVER.DEVICE.startswith("cuda:"):
        raise ConfigError(f"SOLVER.DEVICE must be auto, cpu, cuda or cuda:N, got {cfg.SOLVER.DEVICE!r}")
    for key in ("AMP", "CHANNELS_LAST"):
        if not (isinstance(cfg.SOLVER[key], bool) or cfg.SOLVER[key] == "auto"):
            raise ConfigError(f"SOLVER.{key} must be True, False or auto, got {cfg.SOLVER[key]!r}")
    if cfg.SOLVER.AMP is True and cfg.SOLVER.AMP_DTYPE == "float16" and cfg.SOLVER.DEVICE == "cpu":
        raise ConfigError("SOLVER.AMP_DTYPE float16 needs CUDA; use bfloat16 on CPU")
