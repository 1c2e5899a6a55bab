"""The dataset registry and build_dataloaders().

A dataset builder is registered with `@DATASETS.register("name")` and called as
`builder(cfg, two_views=False) -> DatasetSplits`. Every dataset item is
`(image, target, index)`; with two_views (asked for by kdlab.engine.builder when the method's
class declares `two_views`, e.g. MLKD) the training image is a tuple `(weak, strong)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch.utils.data import DataLoader, Dataset
from yacs.config import CfgNode

from kdlab.config import hooks
from kdlab.data.sampling import ResumableSampler, SeededDataset, worker_init
from kdlab.errors import ConfigError, UnknownNameError
from kdlab.registry import Registry

DATASETS = Registry("dataset")
hooks.register_names("DATASET.TYPE", DATASETS.names)


def check_image_size(cfg: CfgNode) -> None:
    """A dataset whose builder never resizes (it sets `fixed_image_size`) refuses any DATASET.IMAGE_SIZE but its own."""
    size = cfg.DATASET.IMAGE_SIZE
    builder = DATASETS.get(cfg.DATASET.TYPE) if cfg.DATASET.TYPE in DATASETS else None
    native = getattr(builder, "fixed_image_size", None)
    resizing = getattr(builder, "resizing_pipelines", ())  # DATASET.PIPELINE values under which it does resize
    if native and cfg.DATASET.PIPELINE in resizing:
        native = None
    if size < 0 or (native and size not in (0, native)):
        uses = f"always trains at {native}x{native} (it does not resize)" if native else "needs a size >= 0"
        other = f" (or DATASET.PIPELINE {resizing[0]}, which resizes)" if native and resizing else ""
        raise ConfigError(
            f"DATASET.IMAGE_SIZE {size}: DATASET.TYPE {cfg.DATASET.TYPE} {uses}; set DATASET.IMAGE_SIZE "
            f"{'0 or ' + str(native) if native else '0 for the default'}{other}"
        )
    pipelines = ("", *resizing)
    if cfg.DATASET.PIPELINE not in pipelines:
        raise ConfigError(f"DATASET.PIPELINE {cfg.DATASET.PIPELINE!r}: DATASET.TYPE {cfg.DATASET.TYPE} takes "
                          f"{' or '.join(repr(p) for p in pipelines)}")


hooks.register_validator(check_image_size)


@dataclass
class DatasetSplits:
    """What a dataset builder returns."""

    train: Dataset
    val: Dataset
    num_classes: int
    class_names: list[str]
    task: str = "classification"  # classification | segmentation
    in_channels: int = 3
    input_size: tuple[int, int] = (32, 32)  # (H, W) of the training images, as the builder makes them
    # For in-memory datasets: a transform applied to whole batches on the training device,
    # called as fn(batch, generator) -> batch. None when items are already transformed.
    train_batch_transform: Optional[Callable] = None
    val_batch_transform: Optional[Callable] = None
    info: dict = field(default_factory=dict)  # e.g. which on-disk variant was used


def build_datasets(cfg: CfgNode, two_views: bool = False) -> DatasetSplits:
    """Build the configured dataset's train/val splits (no loaders); two_views: (weak, strong) training images."""
    return DATASETS.get(cfg.DATASET.TYPE)(cfg, two_views=two_views)


def build_dataloaders(
    cfg: CfgNode,
    two_views: bool = False,
    rank: int = 0,
    world_size: int = 1,
    splits: DatasetSplits | None = None,
):
    """Return (train_loader, val_loader, num_classes) for the configured dataset.

    The training order and every random augmentation are functions of
    (EXPERIMENT.SEED, epoch, sample index), so a resumed run sees exactly the same data.
    Under torchrun each rank loads SOLVER.BATCH_SIZE // world_size images per step.
    """
    if splits is None:
        splits = build_datasets(cfg, two_views)
    seed = cfg.EXPERIMENT.SEED
    per_rank = max(1, cfg.SOLVER.BATCH_SIZE // world_size)
    train_set = SeededDataset(splits.train, seed)
    sampler = ResumableSampler(len(train_set), seed=seed, shuffle=True, rank=rank, world_size=world_size)
    workers = cfg.DATASET.NUM_WORKERS
    common = dict(
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
        worker_init_fn=worker_init if workers > 0 else None,
    )
    # The loader's own generator keeps it from drawing on the global RNG (which dropout uses).
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(
        train_set, batch_size=per_rank, sampler=sampler, drop_last=False, generator=generator, **common
    )
    val_sampler = ResumableSampler(len(splits.val), seed=seed, shuffle=False, rank=rank, world_size=world_size, pad=False)
    val_loader = DataLoader(
        splits.val, batch_size=max(1, cfg.DATASET.TEST.BATCH_SIZE // world_size), sampler=val_sampler, **common
    )
    train_loader.splits = splits  # type: ignore[attr-defined]
    val_loader.splits = splits  # type: ignore[attr-defined]
    return train_loader, val_loader, splits.num_classes
