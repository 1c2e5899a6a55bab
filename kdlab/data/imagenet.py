"""ImageNet and Imagenette: class-per-folder JPEG datasets.

ImageNet: DATASET.ROOT holds `train/<wnid>/*.JPEG` and `val/<wnid>/*.JPEG`. The official
validation archive is flat (`val/ILSVRC2012_val_00000001.JPEG`, ...); move each image into
its class folder first, e.g. with the well-known `valprep.sh` script (run inside `val/`) from
https://github.com/soumith/imagenetloader.torch, or with torchvision.datasets.ImageNet's
devkit-based preparation. ImageNet cannot be downloaded automatically (its licence requires
a login), so DATASET.DOWNLOAD does not apply.

Imagenette: DATASET.ROOT holds one or more of `imagenette2/` (full size), `imagenette2-320/`
and `imagenette2-160/`, each with `train/<wnid>/` and `val/<wnid>/`. DATASET.VARIANT picks
one; left empty, the smallest variant whose resolution is >= DATASET.IMAGE_SIZE is used
(the smallest of all when IMAGE_SIZE is 0) and DatasetSplits.info records which and why.
DATASET.DOWNLOAD True fetches a missing variant with torchvision.datasets.Imagenette.

Decoding: the file's bytes are read with torchvision.io.read_file; JPEG files (by their
magic bytes, whatever the extension) are decoded with torchvision.io.decode_jpeg straight to
a uint8 RGB tensor (libjpeg-turbo, no PIL round trip); other formats (ImageNet has a few PNG
and CMYK files named .JPEG) and JPEGs decode_jpeg rejects go through PIL. A file neither can
decode raises DatasetFormatError naming it.

Transforms (mdistiller's): train RandomResizedCrop(size) + RandomHorizontalFlip + normalize;
val Resize(size / 0.875) + CenterCrop(size) + normalize (256 / 224 at the default size).
They run on uint8 tensors (antialiased resize), so results are close to, not bit-equal with,
the PIL pipeline. DATASET.GPU_AUGMENT does not apply to these on-disk datasets. A
DATASET.TRAIN_TRANSFORMS / TEST_TRANSFORMS list replaces the split's pipeline (then FitSize to
the working size and normalize: kdlab.data.config_transforms).
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Optional

import torch
from torch.utils.data import Dataset

try:  # deprecated since torchvision 0.29 in favour of TorchCodec; PIL remains when it goes
    from torchvision.io import ImageReadMode, decode_jpeg, read_file
except ImportError:  # pragma: no cover
    decode_jpeg = None

from kdlab.data.build import DATASETS, DatasetSplits
from kdlab.data.config_transforms import FitSize, build_transforms, config_pipeline
from kdlab.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    imagenet_geometric,
    imagenet_train_transform,
    imagenet_val_transform,
    two_view_transform,
)
from kdlab.errors import ConfigError, DatasetFormatError, DatasetNotFoundError

log = logging.getLogger("kdlab")

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
JPEG_MAGIC = b"\xff\xd8\xff"
DEFAULT_IMAGE_SIZE = 224

IMAGENETTE_CLASSES = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888257": "parachute",
}
# variant folder -> (shortest image side, torchvision.datasets.Imagenette size argument)
IMAGENETTE_VARIANTS = {
    "imagenette2-160": (160, "160px"),
    "imagenette2-320": (320, "320px"),
    "imagenette2": (10**9, "full"),  # original resolution: larger than any training size
}


def _decode_jpeg_fast(path: str) -> tuple[Optional[torch.Tensor], bytes]:
    """(decoded image or None, file bytes): torchvision's libjpeg-turbo decoder for JPEG files."""
    with warnings.catch_warnings():  # torchvision 0.29's per-call DeprecationWarning
        warnings.simplefilter("ignore", DeprecationWarning)
        data = read_file(path)
        if bytes(data[:3].tolist()) == JPEG_MAGIC:
            try:
                return decode_jpeg(data, mode=ImageReadMode.RGB), b""
            except RuntimeError:
                pass  # let PIL try (and report) below
    return None, data.numpy().tobytes()


def decode_image(path: str) -> torch.Tensor:
    """Read an image file as a uint8 RGB (3, H, W) tensor; DatasetFormatError names a bad file."""
    try:
        if decode_jpeg is not None:
            image, data = _decode_jpeg_fast(path)
            if image is not None:
                return image
        else:  # pragma: no cover
            with open(path, "rb") as f:
                data = f.read()
    except (OSError, RuntimeError) as e:
        raise DatasetFormatError(f"{path}: cannot read image file ({e})") from None
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.functional import pil_to_tensor

    try:
        with Image.open(io.BytesIO(data)) as img:
            return pil_to_tensor(img.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DatasetFormatError(f"{path}: corrupt or unsupported image ({type(e).__name__}: {e})") from None


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def scan_class_folders(
    folder: str, classes: Optional[Sequence[str]] = None
) -> tuple[list[str], list[tuple[str, int]]]:
    """Return (class folder names, [(path, target)]) of `folder/<class>/<image>`.

    With `classes` (the training split's), targets follow that list and every folder here
    must be one of them. Every class folder must hold at least one image.
    """
    if not os.path.isdir(folder):
        raise DatasetNotFoundError(f"missing folder {folder} (expected {folder}/<wnid>/*.JPEG)")
    with os.scandir(folder) as entries:
        found = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    if not found:
        flat = any(_is_image(n) for n in os.listdir(folder))
        hint = (
            " It holds images directly: sort them into one folder per class (e.g. with valprep.sh)."
            if flat
            else ""
        )
        raise DatasetFormatError(f"{folder}: no class folders found (expected {folder}/<wnid>/*.JPEG).{hint}")
    classes = list(classes) if classes is not None else found
    index = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in found if c not in index]
    if unknown:
        raise DatasetFormatError(
            f"{folder}: class folders {unknown[:5]} are not among the {len(classes)} training classes"
        )
    samples: list[tuple[str, int]] = []
    for name in found:
        class_dir = os.path.join(folder, name)
        with os.scandir(class_dir) as entries:
            files = sorted(e.name for e in entries if e.is_file() and _is_image(e.name))
        if not files:
            raise DatasetFormatError(
                f"{class_dir}: empty class folder (no {'/'.join(IMAGE_EXTENSIONS[:3])} images); "
                "remove it or restore its images"
            )
        samples.extend((os.path.join(class_dir, f), index[name]) for f in files)
    return classes, samples


class ImageFolderDataset(Dataset):
    """`root/<class>/<image>` files -> (transformed image, target, index) items."""

    def __init__(
        self, root: str, transform: Optional[Callable] = None, classes: Optional[Sequence[str]] = None
    ):
        self.root, self.transform = root, transform
        self.classes, self.samples = scan_class_folders(root, classes)
        self.targets = [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        image = decode_image(path)
        if self.transform is not None:
            image = self.transform(image)
        return image, target, index


def build_image_folder(
    cfg, path: str, size: int, class_names: Callable[[list[str]], list[str]], two_views: bool, info: dict
) -> DatasetSplits:
    """Train/val ImageFolderDatasets under path with mdistiller's ImageNet transforms at `size`."""
    augment, train_list, test_list = cfg.DATASET.AUGMENT, cfg.DATASET.TRAIN_TRANSFORMS, cfg.DATASET.TEST_TRANSFORMS
    if train_list:
        train_tf = config_pipeline("DATASET.TRAIN_TRANSFORMS", train_list, size, IMAGENET_MEAN, IMAGENET_STD)
        geometric = [*build_transforms("DATASET.TRAIN_TRANSFORMS", train_list), FitSize(size)]
    else:
        train_tf, geometric = imagenet_train_transform(size, augment=augment), imagenet_geometric(size, augment)
    if two_views:
        train_tf = two_view_transform(train_tf, geometric, IMAGENET_MEAN, IMAGENET_STD)
    val_tf = (config_pipeline("DATASET.TEST_TRANSFORMS", test_list, size, IMAGENET_MEAN, IMAGENET_STD)
              if test_list else imagenet_val_transform(size))
    train = ImageFolderDataset(os.path.join(path, "train"), train_tf)
    val = ImageFolderDataset(os.path.join(path, "val"), val_tf, classes=train.classes)
    return DatasetSplits(
        train=train,
        val=val,
        num_classes=len(train.classes),
        class_names=class_names(train.classes),
        input_size=(size, size),
        info={**info, "path": path, "image_size": size, "train": len(train), "val": len(val)},
    )


# ---------------------------------------------------------------- imagenette
def _has_splits(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "train")) and os.path.isdir(os.path.join(path, "val"))


def choose_imagenette_variant(root: str, variant: str = "", image_size: int = 0) -> tuple[Optional[str], str]:
    """Return (variant folder name or None if none is present, the reason for the choice)."""
    if variant:
        if variant not in IMAGENETTE_VARIANTS:
            raise ConfigError(
                f"DATASET.VARIANT {variant!r} is not an Imagenette variant; "
                f"use one of {', '.join(IMAGENETTE_VARIANTS)} or ''"
            )
        return (variant if _has_splits(os.path.join(root, variant)) else None), "DATASET.VARIANT"
    present = sorted(
        (v for v in IMAGENETTE_VARIANTS if _has_splits(os.path.join(root, v))),
        key=lambda v: IMAGENETTE_VARIANTS[v][0],
    )
    if not present:
        return None, ""
    big_enough = [v for v in present if IMAGENETTE_VARIANTS[v][0] >= image_size]
    if big_enough:
        why = f"smallest of {present} with resolution >= IMAGE_SIZE {image_size}"
        return big_enough[0], why if len(present) > 1 else "the only variant present"
    why = f"IMAGE_SIZE {image_size} exceeds every variant present {present}; using the largest, upsampled"
    log.warning("imagenette: %s", why)
    return present[-1], why


def _variant_for_download(variant: str, image_size: int) -> str:
    if variant:
        return variant
    return min(
        (v for v, (res, _) in IMAGENETTE_VARIANTS.items() if res >= image_size),
        key=lambda v: IMAGENETTE_VARIANTS[v][0],
    )


def _imagenette_missing(root: str, variant: str) -> DatasetNotFoundError:
    names = [variant] if variant else list(IMAGENETTE_VARIANTS)
    paths = ", ".join(os.path.join(root, n) for n in names)
    return DatasetNotFoundError(
        f"imagenette not found: expected {paths} (each with train/<wnid>/*.JPEG and val/<wnid>/*.JPEG; "
        f"DATASET.ROOT={root!r} is the folder that holds imagenette2*/). Set DATASET.DOWNLOAD True to "
        "download it (imagenette2-160: ~94 MB), or set DATASET.ROOT."
    )


@DATASETS.register("imagenette")
def build_imagenette(cfg, two_views: bool = False) -> DatasetSplits:
    root, variant, image_size = cfg.DATASET.ROOT, cfg.DATASET.VARIANT, cfg.DATASET.IMAGE_SIZE
    chosen, why = choose_imagenette_variant(root, variant, image_size)
    if chosen is None and cfg.DATASET.DOWNLOAD:
        from torchvision.datasets import Imagenette

        chosen, why = _variant_for_download(variant, image_size), "downloaded (DATASET.DOWNLOAD True)"
        log.info("downloading %s to %s", chosen, root)
        Imagenette(root, split="train", size=IMAGENETTE_VARIANTS[chosen][1], download=True)
    if chosen is None:
        raise _imagenette_missing(root, variant)
    size = image_size or (160 if chosen == "imagenette2-160" else DEFAULT_IMAGE_SIZE)
    log.info("imagenette: using %s (%s), image size %d", os.path.join(root, chosen), why, size)
    return build_image_folder(
        cfg,
        os.path.join(root, chosen),
        size,
        lambda wnids: [IMAGENETTE_CLASSES.get(w, w) for w in wnids],
        two_views,
        {"variant": chosen, "reason": why},
    )


# ---------------------------------------------------------------- imagenet
def imagenet_class_names(wnids: list[str]) -> list[str]:
    """Human-readable names for the 1000 ILSVRC classes (sorted wnid order), else the wnids."""
    if len(wnids) != 1000:
        return list(wnids)
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


@DATASETS.register("imagenet")
def build_imagenet(cfg, two_views: bool = False) -> DatasetSplits:
    root = cfg.DATASET.ROOT
    missing = [os.path.join(root, s) for s in ("train", "val") if not os.path.isdir(os.path.join(root, s))]
    if missing:
        raise DatasetNotFoundError(
            f"imagenet not found: missing {', '.join(missing)}. DATASET.ROOT={root!r} must hold "
            "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (sort the official flat val/ folder into class "
            "folders with valprep.sh). ImageNet cannot be downloaded automatically: get ILSVRC2012 from "
            "image-net.org and set DATASET.ROOT."
        )
    size = cfg.DATASET.IMAGE_SIZE or DEFAULT_IMAGE_SIZE
    return build_image_folder(cfg, root, size, imagenet_class_names, two_views, {})
