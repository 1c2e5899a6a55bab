"""The dataset registry and build_dataloaders().

A dataset builder is registered with `@DATASETS.register("name")` and called as
`builder(cfg, two_views=False) -> DatasetSplits`. Every dataset item is
`(image, target, index)`; with two_views (asked for by kdlab.engine.builder when the method's
class declares `two_views`, e.g. MLKD) the training image is a tuple `(weak, strong)`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Optional

import torch
from torch.utils.data import DataLoader, Dataset
from yacs.config import CfgNode

from kdlab.config import hooks
from kdlab.data.sampling import ResumableSampler, SeededDataset, worker_init
from kdlab.errors import ConfigError
from kdlab.registry import Registry

DATASETS = Registry("dataset")
VAL_SPLIT_SEED = 0  # the held-out split is the same for every EXPERIMENT.SEED, so runs select on the same images
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
    # With DATASET.VAL_SPLIT > 0: `val` is the held-out part of the training set (model selection) and
    # `test` the dataset's test split, evaluated and reported apart. None otherwise (`val` is the test split).
    test: Optional[Dataset] = None


class IndexedSubset(Dataset):
    """The items of `dataset` at `indices`, re-indexed 0..len-1 (memory-bank methods index by position)."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)
        targets = getattr(dataset, "targets", None)
        if targets is not None:
            self.targets = [int(targets[i]) for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        image, target, _, *view = self.dataset[self.indices[index]]  # view: see TensorImageDataset.return_views
        return (image, target, index, *view)


def held_out_indices(n: int, fraction: float, targets=None) -> tuple[list[int], list[int]]:
    """(train, held-out) indices: a stratified (when targets are given) fraction, fixed by VAL_SPLIT_SEED."""
    from sklearn.model_selection import train_test_split

    try:
        train, held = train_test_split(list(range(n)), test_size=fraction, random_state=VAL_SPLIT_SEED,
                                       stratify=None if targets is None else list(targets))
    except ValueError as exc:
        raise ConfigError(f"DATASET.VAL_SPLIT {fraction}: cannot hold out that fraction of {n} training "
                          f"samples ({exc}); use a larger fraction or 0") from None
    return sorted(train), sorted(held)


def split_off_validation(splits: DatasetSplits, fraction: float) -> DatasetSplits:
    """Hold out `fraction` of the training set, seen through the evaluation transform; the test split moves to test."""
    targets = getattr(splits.train, "targets", None) if splits.task == "classification" else None
    train_idx, held_idx = held_out_indices(len(splits.train), fraction, targets)
    held = copy.copy(splits.train)  # the same images, evaluated as the test split is
    held.transform = getattr(splits.val, "transform", None)
    info = {**splits.info, "val_split": {"fraction": fraction, "train": len(train_idx), "val": len(held_idx),
                                         "stratified": targets is not None, "seed": VAL_SPLIT_SEED}}
    return replace(splits, train=IndexedSubset(splits.train, train_idx), val=IndexedSubset(held, held_idx),
                   test=splits.val, info=info)


def build_datasets(cfg: CfgNode, two_views: bool = False) -> DatasetSplits:
    """Build the configured dataset's train/val splits (no loaders); two_views: (weak, strong) training images."""
    splits = DATASETS.get(cfg.DATASET.TYPE)(cfg, two_views=two_views)
    if cfg.DATASET.VAL_SPLIT > 0:
        splits = split_off_validation(splits, cfg.DATASET.VAL_SPLIT)
    return splits


def check_val_split(cfg: CfgNode) -> None:
    if not 0.0 <= cfg.DATASET.VAL_SPLIT < 1.0:
        raise ConfigError(f"DATASET.VAL_SPLIT must be a fraction in [0, 1) of the training set, "
                          f"got {cfg.DATASET.VAL_SPLIT}")


hooks.register_validator(check_val_split)


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
    def eval_loader(dataset: Dataset) -> DataLoader:
        sampler = ResumableSampler(len(dataset), seed=seed, shuffle=False, rank=rank, world_size=world_size, pad=False)
        return DataLoader(dataset, batch_size=max(1, cfg.DATASET.TEST.BATCH_SIZE // world_size), sampler=sampler,
                          **common)

    val_loader = eval_loader(splits.val)
    train_loader.splits = splits  # type: ignore[attr-defined]
    val_loader.splits = splits  # type: ignore[attr-defined]
    # the test split, when val_loader holds the held-out part of the training set (DATASET.VAL_SPLIT)
    val_loader.test_loader = eval_loader(splits.test) if splits.test is not None else None  # type: ignore[attr-defined]
    return train_loader, val_loader, splits.num_classes
