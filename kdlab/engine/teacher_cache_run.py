"""The teacher-output cache in a training run (DISTILLER.TEACHER_CACHE): use one, build one, or say why not.

Storage, keys, checks and the builder are kdlab.data.teacher_cache's; this module decides, at set-up, whether
this run uses a cache, and gives the trainer the two things it needs per step: the view ids of the batch's
augmentation (drawn exactly as the transform draws them) and the cache to look the teacher's logits up in.

`auto` builds a cache when the run alone pays for it: building runs the teacher once per view of every training
image (num_views x N forwards), the run without a cache runs it once per training sample it steps over
(remaining epochs x N, or x MAX_STEPS_PER_EPOCH x batch when that is smaller): EPOCHS >= num_views (162 for
CIFAR, 9 for digits). Below that, one run does not pay for the build, but a teacher that serves several runs
does: tools/cache_teacher.py builds it ahead, and `auto` then uses it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from yacs.config import CfgNode

from kdlab import distributed as dist_utils
from kdlab.errors import ConfigError

log = logging.getLogger("kdlab")

AMP_PRECISION = {"bfloat16": "bf16", "float16": "fp16"}
BUILD_BATCH = 512  # image-views per teacher batch while building


@dataclass
class CachePlan:
    """What this run does with the cache: `cache` is None when it runs the teacher on the fly (`reason` says why)."""

    cache: Any = None  # kdlab.data.teacher_cache.TeacherCache
    record: dict = field(default_factory=dict)  # metrics.json "teacher_cache"

    @property
    def used(self) -> bool:
        return self.cache is not None


def compute_precision(cfg: CfgNode) -> str:
    """The run's teacher precision as the cache key names it: fp32, or bf16 / fp16 under SOLVER.AMP."""
    if cfg.SOLVER.AMP == "auto":
        raise ValueError("SOLVER.AMP auto must be resolved first (kdlab.engine.precision.apply)")
    return AMP_PRECISION[cfg.SOLVER.AMP_DTYPE] if cfg.SOLVER.AMP else "fp32"


def cache_root(cfg: CfgNode) -> str:
    return cfg.DISTILLER.TEACHER_CACHE_DIR or os.path.join(cfg.LOG.PREFIX, "teacher_cache")


def ineligible(cfg: CfgNode, distiller, splits) -> str | tuple:
    """(images, view space) of this run's training augmentation, or the one-line reason no cache can serve it."""
    from kdlab.data.teacher_cache import discrete_views

    if distiller.teacher is None:
        return f"DISTILLER.TYPE {cfg.DISTILLER.TYPE} has no teacher"
    if not type(distiller).teacher_logits_only:
        return (f"DISTILLER.TYPE {cfg.DISTILLER.TYPE} uses more of its teacher than the logits of one view "
                "(features, or two views)")
    return discrete_views(splits)


def run_teacher_forwards(cfg: CfgNode, num_train: int, remaining_epochs: int) -> int:
    """Teacher forwards the rest of this run makes without a cache (one per training sample stepped over)."""
    per_epoch = num_train
    if cfg.SOLVER.MAX_STEPS_PER_EPOCH:
        per_epoch = min(num_train, cfg.SOLVER.MAX_STEPS_PER_EPOCH * cfg.SOLVER.BATCH_SIZE)
    return max(remaining_epochs, 0) * per_epoch


def pays_off(cfg: CfgNode, num_train: int, num_views: int, remaining_epochs: int) -> tuple[bool, str]:
    """Whether building pays within this run (its teacher forwards >= the build's), and the sentence saying so."""
    run, build = run_teacher_forwards(cfg, num_train, remaining_epochs), num_train * num_views
    frac = cfg.SOLVER.MAX_STEPS_PER_EPOCH * cfg.SOLVER.BATCH_SIZE / num_train if cfg.SOLVER.MAX_STEPS_PER_EPOCH else 1
    epochs_needed = math.ceil(num_views / min(frac, 1.0))
    what = (f"this run's {run} teacher forwards ({remaining_epochs} epochs x {run // max(remaining_epochs, 1)} "
            f"images) {'are at least' if run >= build else 'are fewer than'} the {build} of building the cache "
            f"({num_train} images x {num_views} views; it pays from {epochs_needed} epochs)")
    return run >= build, what


def plan_teacher_cache(cfg: CfgNode, distiller, splits, device: torch.device,
                       autocast: Optional[Callable[[], contextlib.AbstractContextManager]] = None,
                       remaining_epochs: Optional[int] = None) -> CachePlan:
    """Resolve DISTILLER.TEACHER_CACHE for this run (after SOLVER.AMP is resolved, before compiling the teacher)."""
    from kdlab.data import teacher_cache as tc

    mode = cfg.DISTILLER.TEACHER_CACHE
    record = {"mode": mode, "used": False, "path": None}
    if mode == "off":
        return CachePlan(record=record)
    found = ineligible(cfg, distiller, splits)
    if isinstance(found, str):
        return _not_used(mode, record, found, ConfigError)
    images, views = found
    key = tc.cache_key(distiller.teacher, images, views, dataset=cfg.DATASET.TYPE,
                       teacher_name=cfg.DISTILLER.TEACHER, num_classes=splits.num_classes,
                       dtype=cfg.DISTILLER.TEACHER_CACHE_DTYPE, precision=compute_precision(cfg))
    path = tc.cache_dir_for(cache_root(cfg), key)
    record.update(path=path, num_images=len(images), num_views=views.num_views)
    try:
        cache = tc.TeacherCache.open(path, expected_key=key)
    except FileNotFoundError:
        problem = None
    except tc.CacheMismatch as exc:  # never used: the cache holds some other teacher's or augmentation's logits
        record["refused"] = str(exc)
        return _not_used(mode, record, f"the cache at {path} does not match this run: {exc}", tc.CacheMismatch)
    except tc.CacheCorrupt as exc:
        problem = str(exc)
    else:
        log.info("teacher cache: using %s (%d images x %d views, %s)", path, len(images), views.num_views,
                 cfg.DISTILLER.TEACHER_CACHE_DTYPE)
        return CachePlan(cache, {**record, "used": True})
    remaining = cfg.SOLVER.EPOCHS if remaining_epochs is None else remaining_epochs
    pays, why = pays_off(cfg, len(images), views.num_views, remaining)
    if mode == "auto" and problem is None and not pays:
        return _not_used(mode, record, f"no cache at {path}, and {why}: build it once for several runs with "
                                       "tools/cache_teacher.py --cfg <this config>", None)
    if dist_utils.is_distributed():
        state = f"is incomplete or corrupt ({problem})" if problem else "does not exist"
        raise ConfigError(f"DISTILLER.TEACHER_CACHE {mode}: the teacher cache {path} {state}; under torchrun it is "
                          "not built: build it first with tools/cache_teacher.py --cfg <this config> (same options)")
    if problem:
        log.warning("teacher cache: %s; rebuilding the chunks that fail their checksum", problem)
    else:
        log.info("teacher cache: building %s (%s)", path, why if mode == "auto" else "DISTILLER.TEACHER_CACHE build")
    start = time.perf_counter()
    cache = tc.build_teacher_cache(distiller.teacher, images, views, path, key, batch_size=BUILD_BATCH,
                                   device=device, autocast=autocast if cfg.SOLVER.AMP else None,
                                   progress=bool(cfg.LOG.PROGRESS))
    seconds = time.perf_counter() - start
    log.info("teacher cache: built %s in %.1f s (%.0f image-views/s)", path, seconds,
             len(images) * views.num_views / max(seconds, 1e-9))
    return CachePlan(cache, {**record, "used": True, "built": True, "build_s": round(seconds, 3)})


def _not_used(mode: str, record: dict, reason: str, error: Optional[type]) -> CachePlan:
    """auto: say why and run the teacher on the fly; build: the error naming the reason."""
    if mode == "build" and error is not None:
        raise error(f"DISTILLER.TEACHER_CACHE build: {reason}; set DISTILLER.TEACHER_CACHE off or auto")
    log.info("teacher cache not used: %s", reason)
    return CachePlan(record={**record, "reason": reason})


def deliver_view_ids(train_loader, plan: CachePlan) -> None:
    """A per-sample dataset (digits) returns (image, target, index, view) while the cache is in use."""
    splits = getattr(train_loader, "splits", None)
    if not plan.used or splits is None or splits.train_batch_transform is not None:
        return  # off, or a batched transform: the trainer draws the view ids itself
    dataset = splits.train
    while not hasattr(dataset, "return_views"):  # through IndexedSubset (DATASET.VAL_SPLIT)
        dataset = dataset.dataset
    dataset.return_views = True


def batch_views(transform, image: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The transform's augmentation of a raw uint8 batch through its view ids: the same draws as
    transform(image, generator), so the run is the one without a cache; returns (augmented, view ids)."""
    views = transform.sample_views(image.shape[0], generator, image.device)
    return transform.render(image, views), views
