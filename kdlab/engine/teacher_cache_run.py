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

# Image-views per teacher batch while building. On a CPU small batches stay in its caches: resnet32x4 on
# 32x32 images ran at 45 image-views/s in batches of 512 and 62-75 in batches of 16-64 (2-core AMD EPYC).
BUILD_BATCH = {"cpu": 64}
BUILD_BATCH_DEFAULT = 512


def build_batch_size(device: torch.device) -> int:
    return BUILD_BATCH.get(torch.device(device).type, BUILD_BATCH_DEFAULT)


DEVICE_RESIDENT_FRACTION = 0.25  # on CUDA, a cache up to this share of the free memory is copied there


@dataclass
class CacheUse:
    """What this run does with the cache: `cache` is None when it runs the teacher on the fly (record["reason"])."""

    cache: Any = None  # kdlab.data.teacher_cache.TeacherCache
    record: dict = field(default_factory=dict)  # metrics.json "teacher_cache"

    @property
    def used(self) -> bool:
        return self.cache is not None


def resolve(cfg: CfgNode, distiller, splits):
    """The run's kdlab.data.teacher_cache.CachePlan (images, views, key, path), or the one-line reason none serves."""
    from kdlab.data.teacher_cache import resolve_cache

    if distiller.teacher is None:
        return f"DISTILLER.TYPE {cfg.DISTILLER.TYPE} has no teacher"
    if not distiller.teacher_logits_only:  # a class's declaration, or an instance's (CONKD.KD_ON embeddings)
        return (f"DISTILLER.TYPE {cfg.DISTILLER.TYPE} uses more of its teacher than the logits of one view "
                "(features, or two views)")
    return resolve_cache(cfg, distiller.teacher, splits)


def run_teacher_forwards(cfg: CfgNode, num_train: int, remaining_epochs: int) -> int:
    """Teacher forwards the rest of this run makes without a cache (one per training sample stepped over)."""
    per_epoch = num_train
    if cfg.SOLVER.MAX_STEPS_PER_EPOCH:
        per_epoch = min(num_train, cfg.SOLVER.MAX_STEPS_PER_EPOCH * cfg.SOLVER.BATCH_SIZE)
    return max(remaining_epochs, 0) * per_epoch


def pays_off(cfg: CfgNode, num_train: int, num_views: int, remaining_epochs: int) -> tuple[bool, str]:
    """Whether building pays within this run (its teacher forwards >= the build's), and the sentence saying so."""
    per_epoch, build = run_teacher_forwards(cfg, num_train, 1), num_train * num_views
    run, epochs_needed = per_epoch * max(remaining_epochs, 0), math.ceil(build / per_epoch)
    what = (f"this run's {run} teacher forwards ({remaining_epochs} epochs x {per_epoch} "
            f"images) {'are at least' if run >= build else 'are fewer than'} the {build} of building the cache "
            f"({num_train} images x {num_views} views; it pays from {epochs_needed} epochs)")
    return run >= build, what


def plan_teacher_cache(cfg: CfgNode, distiller, splits, device: torch.device,
                       autocast: Optional[Callable[[], contextlib.AbstractContextManager]] = None,
                       remaining_epochs: Optional[int] = None) -> CacheUse:
    """Resolve DISTILLER.TEACHER_CACHE for this run (after SOLVER.AMP is resolved, before compiling the teacher).

    A matching complete cache is used (off: none is looked for). A cache with another key is refused, never
    used (build: CacheMismatch). An incomplete or corrupt one is repaired (its chunks that fail their checksum
    are computed again) under auto and build alike. A missing one is built under build, and under auto when the
    run pays for it. Under torchrun nothing is built: a ConfigError says to run tools/cache_teacher.py first.
    """
    from kdlab.data import teacher_cache as tc

    mode = cfg.DISTILLER.TEACHER_CACHE
    record = {"mode": mode, "used": False, "path": None}
    if mode == "off":
        return CacheUse(record=record)
    plan = resolve(cfg, distiller, splits)
    if isinstance(plan, str):
        return _not_used(mode, record, plan, ConfigError)
    record.update(path=plan.path, num_images=plan.num_images, num_views=plan.num_views)
    try:
        cache = tc.TeacherCache.open(plan.path, expected_key=plan.key)
    except FileNotFoundError:
        problem = None
    except tc.CacheMismatch as exc:  # never used: the cache holds some other teacher's or augmentation's logits
        record["refused"] = str(exc)
        return _not_used(mode, record, str(exc), tc.CacheMismatch)
    except tc.CacheCorrupt as exc:
        problem = record["repaired"] = str(exc)
    else:
        log.info("teacher cache: using %s (%d images x %d views, %s)", plan.path, plan.num_images, plan.num_views,
                 cache.dtype)
        return CacheUse(device_resident(cache, device), {**record, "used": True})
    remaining = cfg.SOLVER.EPOCHS if remaining_epochs is None else remaining_epochs
    pays, why = pays_off(cfg, plan.num_images, plan.num_views, remaining)
    if mode == "auto" and problem is None and not pays:
        return _not_used(mode, record, f"no cache at {plan.path}{near_miss(plan.path, plan.key)}, and {why}: build "
                                       "it once for several runs with tools/cache_teacher.py --cfg <this config>", None)
    if dist_utils.is_distributed():
        state = f"is incomplete or corrupt ({problem})" if problem else "does not exist"
        raise ConfigError(f"DISTILLER.TEACHER_CACHE {mode}: the teacher cache {plan.path} {state}; under torchrun it "
                          "is not built: build it first with tools/cache_teacher.py --cfg <this config> (same options)")
    if problem:
        log.warning("teacher cache: %s; rebuilding the chunks that fail their checksum", problem)
    else:
        log.info("teacher cache: building %s (%s)", plan.path,
                 why if mode == "auto" else "DISTILLER.TEACHER_CACHE build")
    cache, seconds = build(distiller.teacher, plan, device, autocast, bool(cfg.LOG.PROGRESS))
    return CacheUse(device_resident(cache, device), {**record, "used": True, "built": True,
                                                     "build_s": round(seconds, 3)})


def build(teacher, plan, device: torch.device, autocast=None, progress: bool = True):
    """Build (or finish, or repair) the planned cache; return (the opened cache, seconds)."""
    from kdlab.data.teacher_cache import build_teacher_cache

    start = time.perf_counter()
    cache = build_teacher_cache(teacher, plan.images, plan.views, plan.path, plan.key,
                                batch_size=build_batch_size(device), device=device, autocast=autocast,
                                progress=progress)
    seconds = time.perf_counter() - start
    log.info("teacher cache: built %s in %.1f s (%.0f image-views/s)", plan.path, seconds,
             plan.num_images * plan.num_views / max(seconds, 1e-9))
    return cache, seconds


def near_miss(path: str, key: dict) -> str:
    """' (<dir> is for other settings: <the first differing key field>)' for a cache of the same dataset and teacher
    under the same root (e.g. built at another compute precision), else ''."""
    from kdlab.data.cache_store import CacheCorrupt, key_difference, read_meta

    root, name = os.path.split(path)
    prefix = name.rsplit("_", 1)[0] + "_"
    for other in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        if not other.startswith(prefix) or other == name:
            continue
        try:
            difference = key_difference(read_meta(os.path.join(root, other))["key"], key)
        except (FileNotFoundError, CacheCorrupt):
            continue
        if difference:
            return f" ({os.path.join(root, other)} is for other settings: {difference})"
    return ""


def _not_used(mode: str, record: dict, reason: str, error: Optional[type]) -> CacheUse:
    """auto: say why and run the teacher on the fly; build: the error naming the reason."""
    if mode == "build" and error is not None:
        raise error(f"DISTILLER.TEACHER_CACHE build: {reason}; set DISTILLER.TEACHER_CACHE off or auto")
    log.info("teacher cache not used: %s", reason)
    return CacheUse(record={**record, "reason": reason})


class DeviceRows:
    """A cache's logits copied once into device memory: lookups gather there, so the trainer's step keeps no host
    sync (the memory-mapped lookup reads view ids drawn on the device back to the host). Same values as the
    cache's lookup: stored float32 rows, or bfloat16 ones (exact in bfloat16), widened to float32 on lookup."""

    def __init__(self, cache, device: torch.device, rows_per_copy: int = 1 << 16) -> None:
        self.cache, self.num_views = cache, cache.num_views
        dtype = torch.bfloat16 if cache.dtype == "bfloat16" else torch.float32
        total = cache.num_images * cache.num_views
        self.rows = torch.empty((total, cache.num_classes), dtype=dtype, device=device)
        for start in range(0, total, rows_per_copy):
            flat = torch.arange(start, min(start + rows_per_copy, total))
            self.rows[start:start + len(flat)] = cache.lookup(flat // self.num_views, flat % self.num_views,
                                                              device).to(dtype)

    def __getattr__(self, name: str):  # num_images, path, key, meta, ... of the cache
        if "cache" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["cache"], name)

    def lookup(self, index: torch.Tensor, views: torch.Tensor, device) -> torch.Tensor:
        flat = index.to(self.rows.device, non_blocking=True) * self.num_views + views.to(self.rows.device)
        return self.rows[flat].float()


def device_resident(cache, device: torch.device):
    """On CUDA, the cache as DeviceRows when it takes at most DEVICE_RESIDENT_FRACTION of the free memory."""
    if device.type != "cuda":
        return cache
    need = cache.num_images * cache.num_views * cache.num_classes * (2 if cache.dtype == "bfloat16" else 4)
    free, _ = torch.cuda.mem_get_info(device)
    if need > DEVICE_RESIDENT_FRACTION * free:
        log.info("teacher cache: %.0f MB read from the memory map per step (too large to copy into %s)",
                 need / 2**20, device)
        return cache
    log.info("teacher cache: %.0f MB copied into %s memory (lookups without a host sync)", need / 2**20, device)
    return DeviceRows(cache, device)


def deliver_view_ids(train_loader, plan: CacheUse) -> None:
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
