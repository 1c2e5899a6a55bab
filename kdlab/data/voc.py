"""PASCAL VOC 2012 semantic segmentation (21 classes, label 255 = ignore).

Under DATASET.ROOT (the folder that holds `VOCdevkit/`, as torchvision's `root`):

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png        palette ("P") PNGs: pixel = class index
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt   one <id> per line

Masks are read as their palette indices (0..20, 255 on object borders and "difficult" regions),
never as RGB colours; single-channel ("L") PNGs such as the SBD-augmented `SegmentationClassAug`
read the same way. DATASET.DOWNLOAD True fetches VOCtrainval_11-May-2012 (~2 GB) with
torchvision.datasets.VOCSegmentation.

Joint image/mask transforms (torchvision.transforms.v2 with tv_tensors.Mask, so masks are
resized with nearest-neighbour and padded with 255). S = DATASET.IMAGE_SIZE, default 320:

- train: random rescale of the short side to [S/2, 2S] (torchvision's segmentation reference
  scale range), random S x S crop (padded with 0 / 255 where the image is smaller), horizontal
  flip, normalize (ImageNet statistics);
- val: resize so the long side is S (aspect ratio kept), pad bottom/right to S x S with 0 / 255,
  normalize. Deterministic; batches have one shape. mIoU is therefore measured at the working
  resolution S, not at each image's original size (padding is ignored, it is labelled 255).

A DATASET.TRAIN_TRANSFORMS / TEST_TRANSFORMS list replaces a split's pipeline and runs jointly on image
and mask (kdlab.data.config_transforms; mask pixels padded or rotated in are 255 unless an entry sets fill),
then a resize to S x S where the list left another size, and normalize.

Items are (image float 3 x S x S, mask int64 S x S, index). A file that is missing or corrupt,
or a mask whose size differs from its image, raises a DatasetFormatError naming the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from kdlab.constants import IGNORE_INDEX
from kdlab.data.build import DATASETS, DatasetSplits
from kdlab.data.config_transforms import config_pipeline
from kdlab.data.imagenet import decode_image
from kdlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from kdlab.errors import ConfigError, DatasetFormatError, DatasetNotFoundError

log = logging.getLogger("kdlab")

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip
DEFAULT_IMAGE_SIZE = 320
SCALE_RANGE = (0.5, 2.0)
VOC_FOLDER = os.path.join("VOCdevkit", "VOC2012")
FILL = {tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}


def voc_paths(root: str) -> dict[str, str]:
    base = os.path.join(root, VOC_FOLDER)
    return {
        "images": os.path.join(base, "JPEGImages"),
        "masks": os.path.join(base, "SegmentationClass"),
        "splits": os.path.join(base, "ImageSets", "Segmentation"),
    }


def _missing(root: str) -> list[str]:
    p = voc_paths(root)
    needed = [p["images"], p["masks"], os.path.join(p["splits"], "train.txt"), os.path.join(p["splits"], "val.txt")]
    return [path for path in needed if not os.path.exists(path)]


def locate_voc(root: str, download: bool = False) -> dict[str, str]:
    """The VOC 2012 folders under root (downloading when allowed), else DatasetNotFoundError naming them."""
    if _missing(root) and download:
        from torchvision.datasets import VOCSegmentation

        log.info("downloading PASCAL VOC 2012 trainval (~2 GB) to %s", root)
        VOCSegmentation(root, year="2012", image_set="train", download=True)
    missing = _missing(root)
    if missing:
        raise DatasetNotFoundError(
            f"voc not found: missing {', '.join(missing)}. DATASET.ROOT={root!r} must hold "
            f"{VOC_FOLDER}/{{JPEGImages/<id>.jpg, SegmentationClass/<id>.png, "
            "ImageSets/Segmentation/{train,val}.txt}} (VOCtrainval_11-May-2012.tar extracted there). "
            "Set DATASET.DOWNLOAD True to download it (~2 GB), or set DATASET.ROOT."
        )
    return voc_paths(root)


def read_split(paths: dict[str, str], split: str) -> list[tuple[str, str]]:
    """[(image path, mask path)] for the ids listed in ImageSets/Segmentation/<split>.txt; both must exist."""
    split_file = os.path.join(paths["splits"], f"{split}.txt")
    with open(split_file, encoding="utf-8") as f:
        ids = [line.strip() for line in f if line.strip()]
    if not ids:
        raise DatasetFormatError(f"{split_file}: lists no image ids")
    pairs = []
    for image_id in ids:
        image = os.path.join(paths["images"], f"{image_id}.jpg")
        mask = os.path.join(paths["masks"], f"{image_id}.png")
        for path, what in ((image, "image"), (mask, "mask")):
            if not os.path.isfile(path):
                raise DatasetFormatError(f"{split_file}: id {image_id!r} has no {what} file {path}")
        pairs.append((image, mask))
    return pairs


def read_mask(path: str, num_classes: int = len(VOC_CLASSES)) -> torch.Tensor:
    """A palette (or single-channel) PNG as a uint8 (H, W) tensor of class indices, checked to be 0..C-1 or 255."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            mode = img.mode
            indices = np.array(img, dtype=np.uint8) if mode in ("P", "L") else None  # palette indices, not RGB
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise DatasetFormatError(f"{path}: corrupt or unsupported mask ({type(e).__name__}: {e})") from None
    if indices is None:
        raise DatasetFormatError(
            f"{path}: mask has mode {mode!r}; expected a palette ('P') or single-channel ('L') PNG "
            "whose pixel values are class indices (VOC's SegmentationClass format)"
        )
    labels = indices[indices != IGNORE_INDEX]
    if labels.size and int(labels.max()) >= num_classes:
        raise DatasetFormatError(
            f"{path}: mask holds label {int(labels.max())}; expected 0..{num_classes - 1} or {IGNORE_INDEX} (ignore)"
        )
    return torch.from_numpy(indices)


class PadBottomRight:
    """Pad image and mask on the bottom/right to size x size (image with 0, mask with the ignore label)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: tv_tensors.Image, mask: tv_tensors.Mask):
        h, w = image.shape[-2:]
        padding = [0, 0, max(0, self.size - w), max(0, self.size - h)]
        return TF.pad(image, padding, fill=0), TF.pad(mask, padding, fill=IGNORE_INDEX)

    def __repr__(self) -> str:
        return f"PadBottomRight(size={self.size})"


def voc_train_transform(size: int, augment: bool = True, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> v2.Compose:
    """Random rescale (short side in [S/2, 2S]) + random S x S crop (padded) + flip + normalize."""
    if not augment:
        return voc_val_transform(size, mean, std)
    return v2.Compose([
        v2.RandomResize(int(SCALE_RANGE[0] * size), int(SCALE_RANGE[1] * size), antialias=True),
        v2.RandomCrop(size, pad_if_needed=True, fill=FILL),
        v2.RandomHorizontalFlip(),
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(mean, std),
    ])  # fmt: skip


def voc_val_transform(size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> v2.Compose:
    """Long side to S (aspect kept), pad bottom/right to S x S, normalize: deterministic."""
    return v2.Compose([
        v2.Resize(size=None, max_size=size, antialias=True),
        PadBottomRight(size),
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(mean, std),
    ])  # fmt: skip


class VOCSegmentationDataset(Dataset):
    """(image, mask, index) items from (JPEG, palette PNG) pairs with a joint transform."""

    def __init__(self, pairs: list[tuple[str, str]], transform: Callable | None = None) -> None:
        self.pairs, self.transform = pairs, transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        image_path, mask_path = self.pairs[index]
        image = decode_image(image_path)
        mask = read_mask(mask_path)
        if tuple(mask.shape) != tuple(image.shape[-2:]):
            raise DatasetFormatError(
                f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {image_path} is "
                f"{image.shape[2]}x{image.shape[1]}; a mask must have its image's size"
            )
        image, mask = tv_tensors.Image(image), tv_tensors.Mask(mask[None])
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)[0].long(), index


@DATASETS.register("voc")
def build_voc(cfg, two_views: bool = False) -> DatasetSplits:
    if two_views:
        raise ConfigError(
            f"DATASET.TYPE voc: DISTILLER.TYPE {cfg.DISTILLER.TYPE!r} takes two views per image (as MLKD), "
            "which is classification-only; use NONE, KD or FEATKD for segmentation"
        )
    paths = locate_voc(cfg.DATASET.ROOT, cfg.DATASET.DOWNLOAD)
    size = cfg.DATASET.IMAGE_SIZE or DEFAULT_IMAGE_SIZE
    train_list, test_list = cfg.DATASET.TRAIN_TRANSFORMS, cfg.DATASET.TEST_TRANSFORMS
    train_tf = (config_pipeline("DATASET.TRAIN_TRANSFORMS", train_list, size, IMAGENET_MEAN, IMAGENET_STD,
                                mask_fill=IGNORE_INDEX)
                if train_list else voc_train_transform(size, cfg.DATASET.AUGMENT))
    val_tf = (config_pipeline("DATASET.TEST_TRANSFORMS", test_list, size, IMAGENET_MEAN, IMAGENET_STD,
                              mask_fill=IGNORE_INDEX) if test_list else voc_val_transform(size))
    train = VOCSegmentationDataset(read_split(paths, "train"), train_tf)
    val = VOCSegmentationDataset(read_split(paths, "val"), val_tf)
    return DatasetSplits(
        train=train,
        val=val,
        num_classes=len(VOC_CLASSES),
        class_names=list(VOC_CLASSES),
        task="segmentation",
        input_size=(size, size),
        info={"path": os.path.join(cfg.DATASET.ROOT, VOC_FOLDER), "image_size": size,
              "train": len(train), "val": len(val), "ignore_index": IGNORE_INDEX},
    )
