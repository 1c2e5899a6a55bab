"""CIFAR-10 and CIFAR-100 from the standard python-pickle layout, held in memory as uint8.

Under DATASET.ROOT:

    cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    cifar-100-python/{train, test, meta}

The files are read with a restricted unpickler (kdlab.data.safe_pickle), never with plain
pickle, and checked: `data` must be N x 3072 uint8 and the labels N integers in range.
With DATASET.DOWNLOAD True, missing files are fetched with torchvision's downloader (which
checks their md5) and then read the same way.

Transforms are mdistiller's: train RandomCrop(32, padding=4) + RandomHorizontalFlip +
normalize; test normalize only, at 32x32. DATASET.PIPELINE tiny_transformers selects instead the pipeline of
the logit-standardization repo's tiny-transformers (for its ViT students and its CNN teacher;
kdlab.data.transforms.vit_train_transform / vit_val_transform: images resized to DATASET.IMAGE_SIZE,
timm's strong augmentation, ImageNet mean/std, per sample). With DATASET.GPU_AUGMENT True (and one view) the items are
the raw uint8 (3, 32, 32) tensors and `DatasetSplits.train_batch_transform` /
`val_batch_transform` (kdlab.data.batch_augment) augment and normalize whole batches on the
training device; otherwise (or for two views: (weak, strong) per sample) items are float,
already normalized. A DATASET.TRAIN_TRANSFORMS / TEST_TRANSFORMS list (kdlab.data.config_transforms)
replaces the built-in pipeline of its split and runs per sample on the uint8 tensors.

DATASET.IMAGE_SIZE other than 0/32 resizes (bilinear) after the augmentation: on the device in
the batched path, per sample otherwise. DATASET.NORMALIZE auto then uses ImageNet's statistics
(what torchvision's ImageNet backbones and weights expect), else CIFAR's.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision import transforms as T

from kdlab.data.batch_augment import BatchCropFlipNormalize, BatchNormalize
from kdlab.data.build import DATASETS, DatasetSplits
from kdlab.data.config_transforms import FitSize, build_transforms, config_pipeline
from kdlab.data.digits import TensorImageDataset
from kdlab.data.safe_pickle import load_pickle
from kdlab.data.transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ToFloat,
    cifar_geometric,
    two_view_transform,
    vit_train_transform,
    vit_val_transform,
)
from kdlab.errors import ConfigError, DatasetFormatError, DatasetNotFoundError

log = logging.getLogger("kdlab")
IMAGE_BYTES = 3 * 32 * 32


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant's files live and which keys hold what."""

    name: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    download_mb: int


LAYOUTS = {
    "cifar10": CifarLayout(
        name="cifar10",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_file="test_batch",
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
        num_classes=10,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        download_mb=163,
    ),
    "cifar100": CifarLayout(
        name="cifar100",
        folder="cifar-100-python",
        train_files=("train",),
        test_file="test",
        meta_file="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        num_classes=100,
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        download_mb=161,
    ),
}


def _text(value: Any) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _as_str_keys(obj: Any, path: str) -> dict:
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {_text(k): v for k, v in obj.items()}


def read_batch(path: str, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR batch file -> (uint8 N x 3072 data, int64 N labels), validated."""
    batch = _as_str_keys(load_pickle(path), path)
    for key in ("data", label_key):
        if key not in batch:
            raise DatasetFormatError(f"{path}: missing key {key!r} (found {sorted(batch)})")
    data, labels = batch["data"], batch[label_key]
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != IMAGE_BYTES
    ):
        shape = getattr(data, "shape", None)
        raise DatasetFormatError(
            f"{path}: 'data' must be an N x {IMAGE_BYTES} uint8 array, got "
            f"{type(data).__name__} {getattr(data, 'dtype', '')} {shape}"
        )
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise DatasetFormatError(f"{path}: {label_key!r} must be a list of integers ({e})") from None
    if len(labels) != len(data):
        raise DatasetFormatError(f"{path}: {len(data)} images but {len(labels)} labels in {label_key!r}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetFormatError(
            f"{path}: labels must lie in [0, {num_classes - 1}], found {labels.min()}..{labels.max()}"
        )
    return data, labels


def read_class_names(path: str, names_key: str, num_classes: int) -> list[str]:
    meta = _as_str_keys(load_pickle(path), path)
    names = meta.get(names_key)
    if not isinstance(names, (list, tuple)) or len(names) != num_classes:
        raise DatasetFormatError(f"{path}: {names_key!r} must list {num_classes} class names")
    return [_text(n) for n in names]


def _missing_files(folder: str, layout: CifarLayout) -> list[str]:
    names = (*layout.train_files, layout.test_file, layout.meta_file)
    return [os.path.join(folder, n) for n in names if not os.path.isfile(os.path.join(folder, n))]


def _download(root: str, layout: CifarLayout) -> None:
    from torchvision import datasets

    log.info("downloading %s (%d MB) to %s", layout.name, layout.download_mb, root)
    cls = datasets.CIFAR10 if layout.name == "cifar10" else datasets.CIFAR100
    cls(root, train=True, download=True)


def locate(root: str, layout: CifarLayout, download: bool = False) -> str:
    """Return the dataset folder under root, downloading when allowed; else raise naming the path."""
    folder = os.path.join(root, layout.folder)
    missing = _missing_files(folder, layout)
    if missing and download:
        _download(root, layout)
        missing = _missing_files(folder, layout)
    if missing:
        files = ", ".join((*layout.train_files, layout.test_file, layout.meta_file))
        raise DatasetNotFoundError(
            f"{layout.name} not found: missing {', '.join(missing)}. Expected the python-pickle layout "
            f"{folder}/{{{files}}} (DATASET.ROOT={root!r} is the folder that holds {layout.folder}/). "
            f"Set DATASET.DOWNLOAD True to download it (~{layout.download_mb} MB), or set DATASET.ROOT."
        )
    return folder


def load_cifar(root: str, name: str = "cifar100", download: bool = False):
    """Return (x_train, y_train, x_test, y_test, class_names); images uint8 N x 3 x 32 x 32."""
    layout = LAYOUTS[name]
    folder = locate(root, layout, download)
    parts = [
        read_batch(os.path.join(folder, f), layout.label_key, layout.num_classes) for f in layout.train_files
    ]
    x_test, y_test = read_batch(os.path.join(folder, layout.test_file), layout.label_key, layout.num_classes)
    names = read_class_names(os.path.join(folder, layout.meta_file), layout.names_key, layout.num_classes)
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])

    def images(x: np.ndarray) -> torch.Tensor:
        x = x.reshape(-1, 3, 32, 32)
        return torch.from_numpy(x if x.flags.writeable and x.flags.c_contiguous else x.copy())

    return images(x_train), torch.from_numpy(y_train), images(x_test), torch.from_numpy(y_test), names


def cifar_statistics(cfg, layout: CifarLayout) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per DATASET.NORMALIZE: auto = ImageNet's at a resized IMAGE_SIZE (torchvision backbones)."""
    choice = cfg.DATASET.NORMALIZE
    if choice == "auto":
        choice = "imagenet" if cfg.DATASET.IMAGE_SIZE not in (0, 32) else "dataset"
    return (IMAGENET_MEAN, IMAGENET_STD) if choice == "imagenet" else (layout.mean, layout.std)


def _resize(size: int) -> list:
    return [T.Resize((size, size), antialias=True)] if size != 32 else []


def _per_sample_train(cfg, size: int, mean, std, two_views: bool):
    entries = cfg.DATASET.TRAIN_TRANSFORMS
    if entries:
        train_tf = config_pipeline("DATASET.TRAIN_TRANSFORMS", entries, size, mean, std)
        geometric = [*build_transforms("DATASET.TRAIN_TRANSFORMS", entries), FitSize(size)]
    else:
        geometric = [*cifar_geometric(cfg.DATASET.AUGMENT), *_resize(size)]
        train_tf = T.Compose([*geometric, ToFloat(), T.Normalize(mean, std)])
    return two_view_transform(train_tf, geometric, mean, std) if two_views else train_tf


def _per_sample_val(cfg, size: int, mean, std):
    entries = cfg.DATASET.TEST_TRANSFORMS
    if entries:
        return config_pipeline("DATASET.TEST_TRANSFORMS", entries, size, mean, std)
    return T.Compose([*_resize(size), ToFloat(), T.Normalize(mean, std)])


def build_cifar(cfg, name: str, two_views: bool = False) -> DatasetSplits:
    layout = LAYOUTS[name]
    root = cfg.DATASET.ROOT
    x_tr, y_tr, x_te, y_te, names = load_cifar(root, name, cfg.DATASET.DOWNLOAD)
    mean, std = cifar_statistics(cfg, layout)
    size = cfg.DATASET.IMAGE_SIZE or 32
    resize = size if size != 32 else None
    vit = cfg.DATASET.PIPELINE == "tiny_transformers"
    if vit and (two_views or cfg.DATASET.TRAIN_TRANSFORMS or cfg.DATASET.TEST_TRANSFORMS):
        raise ConfigError("DATASET.PIPELINE tiny_transformers is its own pipeline: it takes neither two-view methods "
                          "nor DATASET.TRAIN_TRANSFORMS / TEST_TRANSFORMS; set it to '' to use those")
    # The batched on-device path serves the built-in pipelines; a configured list runs per sample.
    on_device = cfg.DATASET.GPU_AUGMENT and not two_views and not cfg.DATASET.TRAIN_TRANSFORMS and not vit
    val_on_device = cfg.DATASET.GPU_AUGMENT and not two_views and not cfg.DATASET.TEST_TRANSFORMS and not vit
    if vit:  # tiny-transformers' ViT pipeline (per sample, on the CPU workers, ImageNet statistics)
        train_tf, train_batch = vit_train_transform(size, cfg.DATASET.AUGMENT), None
    elif on_device:
        train_tf = None
        train_batch = (BatchCropFlipNormalize(mean, std, size=resize) if cfg.DATASET.AUGMENT
                       else BatchNormalize(mean, std, size=resize))
    else:
        train_tf, train_batch = _per_sample_train(cfg, size, mean, std, two_views), None
    if vit:
        val_tf, val_batch = vit_val_transform(size), None
    else:
        val_tf, val_batch = (None, BatchNormalize(mean, std, size=resize)) if val_on_device else (
            _per_sample_val(cfg, size, mean, std), None)
    return DatasetSplits(
        train=TensorImageDataset(x_tr, y_tr, train_tf),
        val=TensorImageDataset(x_te, y_te, val_tf),
        num_classes=layout.num_classes,
        class_names=names,
        input_size=(size, size),
        train_batch_transform=train_batch,
        val_batch_transform=val_batch,
        info={
            "path": os.path.join(root, layout.folder),
            "train": len(y_tr),
            "test": len(y_te),
            "image_size": size,
            "normalize": "imagenet" if vit or mean == IMAGENET_MEAN else name,
            "augment": "batched on device" if on_device else ("two views" if two_views else "per sample"),
        },
    )


@DATASETS.register("cifar10")
def build_cifar10(cfg, two_views: bool = False) -> DatasetSplits:
    return build_cifar(cfg, "cifar10", two_views)


@DATASETS.register("cifar100")
def build_cifar100(cfg, two_views: bool = False) -> DatasetSplits:
    return build_cifar(cfg, "cifar100", two_views)


# DATASET.PIPELINE tiny_transformers: the ViT pipeline of logit-standardization-KD's tiny-transformers code.
build_cifar10.resizing_pipelines = build_cifar100.resizing_pipelines = ("tiny_transformers",)


