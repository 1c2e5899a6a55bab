"""The step with a teacher-output cache, for tools/bench.py --teacher-cache and tools/bench_teacher_cache.py.

A real cache (kdlab.data.teacher_cache's builder and files) is built over the images of the timed batch, all
their views, and the step is Trainer.train_step with that cache: the batch transform draws view ids, renders
them, and the teacher's logits are read through TeacherCache.lookup, as in a training run. With fewer cache
images than the batch holds (a quick run), the batch repeats them: every looked-up row is still the right one.
The build is timed too, giving the builder's throughput and so the cost of a full build.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

import torch

from kdlab.benchmark.data import CIFAR_SIZES, sync
from kdlab.engine.teacher_cache_run import batch_views, build_batch_size, device_resident
from kdlab.engine.trainer import Trainer
from kdlab.errors import ConfigError


def build_bench_cache(trainer: Trainer, images: torch.Tensor, folder: str, batch_size: int = 0):
    """Build a cache of the trainer's teacher over raw uint8 images (all views); return (cache, seconds).

    batch_size 0: as a training run builds on this device (kdlab.engine.teacher_cache_run.build_batch_size)."""
    from kdlab.data import teacher_cache as tc

    views = trainer.train_batch_transform
    if views is None or not hasattr(views, "sample_views"):
        raise ConfigError("--teacher-cache times the batched CIFAR path (DATASET.GPU_AUGMENT True, no "
                          "DATASET.TRAIN_TRANSFORMS): its augmentation has finitely many views")
    cfg = trainer.cfg
    key = tc.cache_key(trainer.distiller.teacher, images, views, dataset=cfg.DATASET.TYPE,
                       teacher_name=cfg.DISTILLER.TEACHER, num_classes=trainer.num_classes,
                       dtype=cfg.DISTILLER.TEACHER_CACHE_DTYPE, precision=tc.compute_precision(cfg))
    batch_size = batch_size or build_batch_size(trainer.device)
    sync(trainer.device)
    start = time.perf_counter()
    cache = tc.build_teacher_cache(trainer.distiller.teacher, images, views, os.path.join(folder, "cache"), key,
                                   batch_size=batch_size, device=trainer.device,
                                   autocast=trainer.autocast if cfg.SOLVER.AMP else None, progress=False)
    sync(trainer.device)
    return cache, time.perf_counter() - start


def cached_batch(batch, n_images: int) -> tuple:
    """The timed batch over its first n_images images (repeated to the batch size), indexed 0..n_images-1."""
    image, target = batch[0], batch[1]
    order = torch.arange(len(target)) % n_images
    return image[order], target, order


def check_lookup(trainer: Trainer, batch) -> float:
    """Largest |cached - teacher(view)| over one step's batch: the lookup returns the teacher's logits."""
    image = batch[0].to(trainer.device)
    g = torch.Generator(device=trainer.device).manual_seed(0)
    rendered, views = batch_views(trainer.train_batch_transform, image, g)
    with torch.no_grad(), trainer.autocast():
        expected = trainer.distiller.teacher(rendered)[0].float()
    got = trainer.teacher_cache.lookup(batch[2], views, trainer.device)
    return (got - expected).abs().max().item()


def cached_step(trainer: Trainer, batch, n_images: int, folder: str, build_images: int = 0,
                build_batch: int = 0) -> tuple[Callable[[], None], dict[str, Any]]:
    """(step, facts): the trainer's step with a cache over n_images images of batch, and the build's figures.

    With build_images > n_images the cache also holds random images up to that count, so that the build
    (the throughput measured) is larger than one batch: on a GPU one batch's views take well under a second.
    """
    from kdlab.benchmark.step import trainer_step

    n_images = max(1, min(n_images or len(batch[1]), len(batch[1])))
    batch = cached_batch(batch, n_images)
    images = batch[0][:n_images].contiguous()
    if build_images > n_images:
        g = torch.Generator().manual_seed(0)
        extra = torch.randint(0, 256, (build_images - n_images, *images.shape[1:]), dtype=torch.uint8, generator=g)
        images = torch.cat([images.cpu(), extra])
    build_batch = build_batch or build_batch_size(trainer.device)
    cache, seconds = build_bench_cache(trainer, images, folder, build_batch)
    trainer.teacher_cache = device_resident(cache, trainer.device)  # as a training run does
    facts = {"images": len(images), "views": cache.num_views, "dtype": str(cache.dtype), "build_s": round(seconds, 3),
             "build_batch": build_batch, "image_views_per_s": len(images) * cache.num_views / max(seconds, 1e-9),
             "lookup_max_abs_diff": check_lookup(trainer, batch)}
    return trainer_step(trainer, batch), facts


def full_build_estimate(build: dict, dataset: str, batch_size: int, step_s: float) -> dict[str, Any]:
    """A full build of the dataset's training split at the measured throughput: seconds, hours, and epochs of
    the on-the-fly step (ceil(N / batch) x step_s per epoch) it costs."""
    n_train = CIFAR_SIZES.get(dataset, (None,))[0]
    if not n_train:
        return {}
    seconds = n_train * build["views"] / build["image_views_per_s"]
    epoch_s = math.ceil(n_train / batch_size) * step_s
    return {"full_images": n_train, "full_build_s": round(seconds, 1), "full_build_h": round(seconds / 3600, 2),
            "full_build_epochs": round(seconds / epoch_s, 1)}


def payoff(result: dict) -> dict[str, Any]:
    """Epochs of training whose teacher time the build repays: build epochs / (1 - cached step / step)."""
    saved = 1.0 - result["cached_step_s"] / result["step_s"]
    epochs = result["build"].get("full_build_epochs")
    if epochs is None or saved <= 0:
        return {}
    return {"saved_fraction": round(saved, 3), "break_even_epochs": round(epochs / saved, 1)}


def summarize_cached(result: dict, cached_times: list[float], build: dict) -> dict[str, Any]:
    """The cached step's median, its speed-up over the shipped step, its ratio to mdistiller's, and the build."""
    import statistics

    step_s = statistics.median(cached_times)
    out: dict[str, Any] = {"cached_step_s": step_s, "cached_images_per_s": result["batch_size"] / step_s,
                           "speedup_cached": result["step_s"] / step_s}
    if "reference_step_s" in result:
        out["ratio_cached"] = step_s / result["reference_step_s"]
    build = {**build, **full_build_estimate(build, result["dataset"], result["batch_size"], result["step_s"])}
    out["build"] = build
    out.update(payoff({**result, **out}))
    if "run_estimate_train_h" in result:  # the same run with the teacher's logits read from the cache
        train_h = result["run_estimate_train_h"]
        out["run_estimate_cached_h"] = round(result["run_estimate_h"] - train_h * (1 - step_s / result["step_s"]), 2)
    return out
