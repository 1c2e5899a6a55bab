"""Exact teacher-output cache for logit-only methods: the teacher's logits for every view of every training image.

Where a dataset's training augmentation has finitely many outcomes per image (a *view space*:
CIFAR's batched crop + flip, 162 views at padding 4; digits' 1-pixel shift, 9 views; no augmentation,
1 view), a frozen teacher's logits are a function of (training index, view id). They are computed
once (`build_teacher_cache`), stored on disk (kdlab.data.cache_store: raw file + meta.json, checksums,
resumable) under a key of everything they depend on (`cache_key`), and looked up during training
instead of running the teacher.

A view space has `num_views`, `view_key()` (JSON-able parameters that fix the outcomes) and
`render(batch, views)` (the augmented batch for view ids (N,)); see BatchCropFlipNormalize,
BatchNormalize (kdlab.data.batch_augment), RandomShift (kdlab.data.digits) and NoAugment below.
`resolve_cache(cfg, teacher, splits)` goes from a run to its cache's images, views, key and path,
for tools/cache_teacher.py and the trainer alike.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional, Protocol, Union

import numpy as np
import torch
import torch.nn as nn
from yacs.config import CfgNode

from kdlab.data.build import DatasetSplits, IndexedSubset
from kdlab.data.cache_store import (
    DATA_FILE,
    DTYPES,
    FORMAT_VERSION,
    META_FILE,
    PRECISIONS,
    CacheCorrupt,
    CacheMismatch,
    TeacherCache,
    bad_chunks,
    cache_dir_for,
    check_key,
    chunk_rows,
    describe_chunk,
    new_meta,
    read_meta,
    total_bytes,
    write_meta,
)
from kdlab.data.digits import DigitsTwoViews, _identity_views
from kdlab.data.transforms import TwoViews

__all__ = ["CacheCorrupt", "CacheMismatch", "CachePlan", "NoAugment", "TeacherCache", "ViewSpace",
           "build_teacher_cache", "cache_dir_for", "cache_key", "compute_precision", "discrete_views",
           "resolve_cache"]

log = logging.getLogger("kdlab")
CHUNK_VIEWS = 8192  # image-views per chunk (a whole number of images): the unit of checksums and of resuming


class ViewSpace(Protocol):
    num_views: int

    def view_key(self) -> dict: ...

    def render(self, batch: torch.Tensor, views: torch.Tensor) -> torch.Tensor: ...


class NoAugment:
    """The view space of a dataset trained without augmentation: one view, the image itself."""

    num_views = 1

    def view_key(self) -> dict:
        return {"kind": "none"}

    def sample_view(self) -> int:
        return 0

    def apply(self, image: torch.Tensor, view: int) -> torch.Tensor:
        return image

    def render(self, batch: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        return batch


# ---------------------------------------------------------------- which datasets have view spaces
def _is_view_space(obj) -> bool:
    return all(hasattr(obj, name) for name in ("num_views", "view_key", "render"))


def _per_sample_reason(transform, cfg: Optional[CfgNode]) -> str:
    """Why a per-sample training transform has no finite view space, naming the key that chose it."""
    if isinstance(transform, (TwoViews, DigitsTwoViews)) or transform is _identity_views:
        return "the method trains on two views per image (weak, strong), which the teacher cache does not hold"
    if cfg is not None and cfg.DATASET.TRAIN_TRANSFORMS:
        return ("DATASET.TRAIN_TRANSFORMS is set: a configured pipeline runs per sample with its own draws, not a "
                "finite set of views; clear it to use the teacher cache")
    if cfg is not None and cfg.DATASET.PIPELINE:
        return (f"DATASET.PIPELINE {cfg.DATASET.PIPELINE} augments per sample with continuous parameters "
                "(RandomResizedCrop, RandAugment): no finite set of views")
    if cfg is not None and not cfg.DATASET.GPU_AUGMENT:
        return ("DATASET.GPU_AUGMENT is False: the per-sample path draws crops and flips per sample; set "
                "DATASET.GPU_AUGMENT True (the batched path, whose views the cache holds)")
    name = type(transform).__name__
    if any(_is_view_space(t) for t in getattr(transform, "transforms", ())):
        keys = "DATASET.TEST_TRANSFORMS (digits then standardizes each image first)" if cfg is None or \
            cfg.DATASET.TEST_TRANSFORMS else "the dataset"
        return (f"the training transform ({name}) wraps its view space in per-sample steps, set by {keys}; the "
                "cache follows only a bare view space")
    return (f"the training images go through a per-sample transform ({name}) that is not a view space (CIFAR with "
            "DATASET.GPU_AUGMENT False, DATASET.TRAIN_TRANSFORMS, ...): no finite set of views")


def discrete_views(splits: DatasetSplits, cfg: Optional[CfgNode] = None) -> Union[tuple[torch.Tensor, ViewSpace], str]:
    """(raw training images in training-index order, view space), or one line saying why there is none.

    cfg (optional) only makes the reason name the key that chose the augmentation.
    """
    if splits.task != "classification":
        return f"the teacher cache holds classification logits; this dataset's task is {splits.task}"
    dataset, indices = splits.train, None
    if isinstance(dataset, IndexedSubset):  # DATASET.VAL_SPLIT: training index k is image indices[k]
        dataset, indices = dataset.dataset, dataset.indices
    images = getattr(dataset, "images", None)
    if not isinstance(images, torch.Tensor):
        return (f"the training set ({type(dataset).__name__}) is decoded per sample, not held in memory, and augmented "
                "per sample (ImageNet-style datasets): no finite set of views")
    transform = getattr(dataset, "transform", None)
    if splits.train_batch_transform is not None:
        views = splits.train_batch_transform
        if transform is not None or not _is_view_space(views):
            return f"the training augmentation {views!r} is not a view space"
    elif transform is None:
        views = NoAugment()
    elif _is_view_space(transform):
        views = transform
    else:
        return _per_sample_reason(transform, cfg)
    if indices is not None:
        images = images[torch.as_tensor(indices, dtype=torch.long)]
    return images, views


# ---------------------------------------------------------------- the key
def _update(h, tensor: torch.Tensor, name: str = "") -> None:
    t = tensor.detach().cpu().contiguous()
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy())


def module_sha256(module: nn.Module) -> str:
    """sha256 of a module's state_dict: sorted keys, dtypes, shapes and tensor bytes (device and layout free)."""
    h = hashlib.sha256()
    state = {k.replace("_orig_mod.", ""): v for k, v in module.state_dict().items()}  # torch.compile wrappers
    for name in sorted(state):
        _update(h, state[name], name)
    return h.hexdigest()


def tensor_sha256(tensor: torch.Tensor) -> str:
    h = hashlib.sha256()
    _update(h, tensor)
    return h.hexdigest()


def cache_key(teacher: nn.Module, images: torch.Tensor, views: ViewSpace, *, dataset: str, teacher_name: str,
              num_classes: int, dtype: str, precision: str) -> dict:
    """Everything the cached numbers depend on; two runs share a cache only if their keys are equal."""
    if dtype not in DTYPES:
        raise ValueError(f"teacher cache dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"teacher cache precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return {"format": FORMAT_VERSION, "dataset": dataset, "teacher": teacher_name,
            "teacher_sha256": module_sha256(teacher), "num_classes": int(num_classes),
            "num_images": len(images), "images_sha256": tensor_sha256(images), "views": views.view_key(),
            "num_views": int(views.num_views), "dtype": dtype, "precision": precision}


def compute_precision(cfg: CfgNode) -> str:
    """fp32 | bf16 | fp16 from a resolved SOLVER.AMP / AMP_DTYPE (the precision the teacher runs in)."""
    if cfg.SOLVER.AMP == "auto":
        raise ValueError("SOLVER.AMP auto must be resolved first (kdlab.engine.precision)")
    return {"bfloat16": "bf16", "float16": "fp16"}[cfg.SOLVER.AMP_DTYPE] if cfg.SOLVER.AMP else "fp32"


@dataclass
class CachePlan:
    """What a run's cache holds (images x views), its key and where it lives."""

    images: torch.Tensor
    views: ViewSpace
    key: dict
    path: str

    @property
    def num_images(self) -> int:
        return len(self.images)

    @property
    def num_views(self) -> int:
        return self.views.num_views


def resolve_cache(cfg: CfgNode, teacher: nn.Module, splits: DatasetSplits, *, root: Optional[str] = None,
                  dtype: Optional[str] = None, precision: Optional[str] = None) -> Union[CachePlan, str]:
    """The run's cache plan, or one line saying why its augmentation has no finite set of views.

    root / dtype default to DISTILLER.TEACHER_CACHE_DIR (empty: <LOG.PREFIX>/teacher_cache) and
    DISTILLER.TEACHER_CACHE_DTYPE (float32 where the key does not exist); precision to the run's
    resolved SOLVER.AMP.
    """
    found = discrete_views(splits, cfg)
    if isinstance(found, str):
        return found
    images, views = found
    dtype = dtype or cfg.DISTILLER.get("TEACHER_CACHE_DTYPE", "") or "float32"
    root = root or cfg.DISTILLER.get("TEACHER_CACHE_DIR", "") or os.path.join(cfg.LOG.PREFIX, "teacher_cache")
    key = cache_key(teacher, images, views, dataset=cfg.DATASET.TYPE, teacher_name=cfg.DISTILLER.TEACHER,
                    num_classes=splits.num_classes, dtype=dtype, precision=precision or compute_precision(cfg))
    return CachePlan(images, views, key, cache_dir_for(root, key))


# ---------------------------------------------------------------- the builder
def _start_or_resume(path: str, key: dict, chunk_images: int) -> dict:
    """meta of the cache at path: resumed (finished chunks whose checksum holds are kept) or new; the file sized."""
    os.makedirs(path, exist_ok=True)
    meta = None
    if os.path.isfile(os.path.join(path, META_FILE)):
        try:
            meta = read_meta(path)
        except CacheCorrupt as exc:
            log.warning("%s: starting the cache afresh", exc)
    if meta is not None:
        check_key(path, meta["key"], key)
    else:
        meta = new_meta(key, chunk_images)
    data = os.path.join(path, DATA_FILE)
    with open(data, "ab") as f:  # creates it; a truncated or padded file is brought to its size
        if f.tell() != total_bytes(meta):
            f.truncate(total_bytes(meta))
    for chunk in bad_chunks(path, meta):
        log.warning("teacher cache %s: %s fails its checksum; computing it again", path, describe_chunk(meta, chunk))
        del meta["chunks"][str(chunk)]
    meta["complete"] = False
    write_meta(path, meta)
    return meta


def _encode(logits: torch.Tensor, dtype: str) -> np.ndarray:
    """float logits -> the stored bits (bfloat16: round to nearest even, as torch's .to(torch.bfloat16))."""
    return logits.float().to(DTYPES[dtype][1]).cpu().view(torch.float32 if dtype == "float32" else torch.int16).numpy()


def _channels_last(teacher: nn.Module, device: torch.device) -> bool:
    """NHWC inputs on CUDA (tensor cores), or where the teacher's convolutions already are NHWC."""
    return device.type == "cuda" or any(
        p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
        for p in teacher.parameters())


def _compute_chunk(teacher, images, views, meta, chunk, batch_size, device, autocast, channels_last) -> np.ndarray:
    """The stored rows of one chunk: its images x all views, through the teacher in batches of image-views.

    Everything stays on the device until the chunk is done (one transfer, no sync per batch).
    """
    num_views = meta["shape"][1]
    start, stop = chunk_rows(meta, chunk)
    first_image = start // num_views
    local = images[first_image : stop // num_views].to(device)
    parts = []
    for s in range(start, stop, batch_size):
        rows = torch.arange(s, min(s + batch_size, stop), device=device)
        x = views.render(local[rows // num_views - first_image], rows % num_views)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            y = teacher(x)
        parts.append((y[0] if isinstance(y, (tuple, list)) else y).float())
    return _encode(torch.cat(parts), meta["dtype"])


def _write(fd: int, buffer: np.ndarray, offset: int) -> None:
    view = memoryview(buffer).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


@torch.no_grad()
def build_teacher_cache(teacher: nn.Module, images: torch.Tensor, views: ViewSpace, path: str, key: dict, *,
                        batch_size: int = 512, device: torch.device | str = "cpu",
                        autocast: Optional[Callable[[], contextlib.AbstractContextManager]] = None,
                        progress: bool = True, chunk_images: Optional[int] = None) -> TeacherCache:
    """Fill the cache at path (new, or resumed: finished chunks with a valid checksum are kept) and open it.

    The teacher runs in eval mode without gradients, on `device` (it is moved there), in batches of
    `batch_size` image-views, under `autocast()` if given; meta.json is replaced after every chunk.
    chunk_images: images per chunk of a new cache (default: about CHUNK_VIEWS image-views).
    """
    from tqdm import tqdm

    if batch_size < 1 or (chunk_images is not None and chunk_images < 1):
        raise ValueError(f"batch_size and chunk_images must be >= 1, got {batch_size}, {chunk_images}")
    device = torch.device(device)
    chunk_images = chunk_images or max(1, round(CHUNK_VIEWS / views.num_views))
    meta = _start_or_resume(path, key, chunk_images)
    todo = [k for k in range(meta["num_chunks"]) if str(k) not in meta["chunks"]]
    total_views = meta["shape"][0] * meta["shape"][1]
    done_views = total_views - sum(stop - start for start, stop in (chunk_rows(meta, k) for k in todo))
    autocast = autocast or contextlib.nullcontext
    was_training = teacher.training
    teacher.eval().to(device)
    channels_last = _channels_last(teacher, device)
    bar = tqdm(total=total_views, initial=done_views, unit="view", disable=not progress,
               desc=f"teacher cache {os.path.basename(path)}", dynamic_ncols=True)
    start = time.perf_counter()
    fd = os.open(os.path.join(path, DATA_FILE), os.O_WRONLY)
    try:
        for chunk in todo:
            out = _compute_chunk(teacher, images, views, meta, chunk, batch_size, device, autocast, channels_last)
            _write(fd, out, chunk_rows(meta, chunk)[0] * out.shape[1] * out.itemsize)
            meta["chunks"][str(chunk)] = hashlib.sha256(memoryview(out).cast("B")).hexdigest()
            write_meta(path, meta)  # only after the chunk's bytes are in the file
            bar.update(len(out))
    finally:
        os.close(fd)
        bar.close()
        teacher.train(was_training)
    meta["complete"] = True
    meta["build_seconds"] = round(meta.get("build_seconds", 0.0) + time.perf_counter() - start, 3)
    write_meta(path, meta)
    return TeacherCache.open(path, key, verify=False)
