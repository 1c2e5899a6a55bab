"""Tiny-ImageNet (the CS231n 200-class, 64x64 subset of ImageNet), as mdistiller trains on it.

DATASET.ROOT holds `tiny-imagenet-200/` as the official zip unpacks (or is that folder itself):

    tiny-imagenet-200/wnids.txt                      the 200 class wnids, one a line
    tiny-imagenet-200/train/<wnid>/images/*.JPEG     500 per class (train/<wnid>/*.JPEG is read too)
    tiny-imagenet-200/val/images/*.JPEG              10,000 images, flat
    tiny-imagenet-200/val/val_annotations.txt        "<file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1>" a line

Validation labels come from val_annotations.txt. A val/ folder already sorted into
val/<wnid>/ (what mdistiller's torchvision ImageFolder needs) is read as it is when
val_annotations.txt is absent. The test/ split has no labels and is not read.

Class index k is the k-th wnid in sorted order: the order of mdistiller's ImageFolder, so its
Tiny-ImageNet teachers' logits line up. wnids.txt must name exactly the train/ class folders.
Every image must be 64x64 (the dataset's size; nothing is resized), grey ones become RGB.

Transforms (mdistiller's `dataset/tiny_imagenet.py`): train RandomRotation(20) +
RandomHorizontalFlip + normalize with Tiny-ImageNet's statistics; val normalize only. Two-view
methods get the strong view of kdlab.data.transforms on the same geometric augmentation.
A DATASET.TRAIN_TRANSFORMS / TEST_TRANSFORMS list replaces the split's augmentation (kdlab.data.config_transforms);
DATASET.NORMALIZE imagenet swaps in ImageNet's statistics. DATASET.DOWNLOAD True fetches and unpacks the
official zip (248 MB) when the folder is missing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Optional

from torch.utils.data import Dataset
from torchvision import transforms as T

from kdlab.data.build import DATASETS, DatasetSplits
from kdlab.data.config_transforms import FitSize, build_transforms, config_pipeline
from kdlab.data.imagenet import _is_image, decode_image
from kdlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ToFloat, two_view_transform
from kdlab.errors import DatasetFormatError, DatasetNotFoundError

log = logging.getLogger("kdlab")

FOLDER = "tiny-imagenet-200"
IMAGE_SIZE = 64
NUM_CLASSES = 200
# mdistiller/dataset/tiny_imagenet.py
TINY_IMAGENET_MEAN = (0.4802, 0.4481, 0.3975)
TINY_IMAGENET_STD = (0.2302, 0.2265, 0.2262)
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
ZIP_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
LAYOUT = (
    f"{FOLDER}/wnids.txt, {FOLDER}/train/<wnid>/images/*.JPEG, {FOLDER}/val/images/*.JPEG and "
    f"{FOLDER}/val/val_annotations.txt"
)


def tiny_imagenet_geometric(augment: bool = True) -> list:
    """mdistiller's Tiny-ImageNet augmentation: RandomRotation(20) + RandomHorizontalFlip."""
    return [T.RandomRotation(20), T.RandomHorizontalFlip(0.5)] if augment else []


def find_folder(root: str) -> Optional[str]:
    """ROOT/tiny-imagenet-200, or ROOT itself when it is that folder; None when neither holds wnids.txt."""
    for path in (os.path.join(root, FOLDER), root):
        if os.path.isfile(os.path.join(path, "wnids.txt")):
            return path
    return None


def _missing(root: str, why: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"tiny_imagenet not found: {why}. DATASET.ROOT={root!r} must hold {LAYOUT} (the official "
        f"tiny-imagenet-200.zip unpacked there). Set DATASET.DOWNLOAD True to download it ({URL}, 248 MB), "
        "or set DATASET.ROOT to the folder that holds tiny-imagenet-200/."
    )


def read_wnids(folder: str) -> list[str]:
    """The sorted wnids of wnids.txt, checked against train/'s class folders."""
    with open(os.path.join(folder, "wnids.txt")) as f:
        wnids = sorted({line.strip() for line in f if line.strip()})
    train = os.path.join(folder, "train")
    if not os.path.isdir(train):
        raise _missing(os.path.dirname(folder), f"missing folder {train}")
    found = sorted(e.name for e in os.scandir(train) if e.is_dir() and not e.name.startswith("."))
    if found != wnids:
        missing, extra = sorted(set(wnids) - set(found)), sorted(set(found) - set(wnids))
        raise DatasetFormatError(
            f"{train}: class folders do not match {os.path.join(folder, 'wnids.txt')} "
            f"({len(missing)} missing, e.g. {missing[:3]}; {len(extra)} not listed, e.g. {extra[:3]}); "
            "unpack tiny-imagenet-200.zip again"
        )
    return wnids


def _images(folder: str) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_file() and _is_image(e.name))


def _class_images(class_dir: str) -> tuple[str, list[str]]:
    """(folder, image names) of a class: <class_dir>/images/ as the zip has it, else <class_dir>/ itself."""
    images_dir = os.path.join(class_dir, "images")
    image_dir = images_dir if os.path.isdir(images_dir) else class_dir
    return image_dir, _images(image_dir)


def train_samples(folder: str, wnids: list[str]) -> list[tuple[str, int]]:
    """(path, target) of train/<wnid>/images/*.JPEG (or train/<wnid>/*.JPEG)."""
    samples = []
    for target, wnid in enumerate(wnids):
        image_dir, files = _class_images(os.path.join(folder, "train", wnid))
        if not files:
            raise DatasetFormatError(f"{image_dir}: no images of class {wnid}; unpack tiny-imagenet-200.zip again")
        samples.extend((os.path.join(image_dir, name), target) for name in files)
    return samples


def val_samples(folder: str, wnids: list[str]) -> list[tuple[str, int]]:
    """(path, target) from val/val_annotations.txt, or from val/<wnid>/ class folders when it is absent."""
    val = os.path.join(folder, "val")
    annotations = os.path.join(val, "val_annotations.txt")
    index = {w: i for i, w in enumerate(wnids)}
    if not os.path.isfile(annotations):
        samples = []
        for wnid in wnids:
            if os.path.isdir(os.path.join(val, wnid)):
                image_dir, files = _class_images(os.path.join(val, wnid))
                samples.extend((os.path.join(image_dir, name), index[wnid]) for name in files)
        if not samples:
            raise _missing(os.path.dirname(folder), f"missing {annotations}")
        return samples
    samples = []
    with open(annotations) as f:
        for number, line in enumerate(f, start=1):
            fields = line.strip().split("\t")
            if fields == [""]:
                continue
            if len(fields) < 2 or fields[1] not in index:
                raise DatasetFormatError(
                    f"{annotations}:{number}: expected '<file>\\t<wnid>\\t...' with a wnid of wnids.txt, "
                    f"got {line.strip()!r}"
                )
            path = os.path.join(val, "images", fields[0])
            if not os.path.isfile(path):
                raise DatasetFormatError(f"{annotations}:{number}: {path} does not exist; unpack the zip again")
            samples.append((path, index[fields[1]]))
    if not samples:
        raise DatasetFormatError(f"{annotations}: no annotations; unpack tiny-imagenet-200.zip again")
    return samples


class TinyImageNetDataset(Dataset):
    """(path, target) samples -> (transformed image, target, index); every image must be 64x64."""

    def __init__(self, samples: list[tuple[str, int]], transform: Optional[Callable] = None) -> None:
        self.samples, self.transform = samples, transform
        self.targets = [t for _, t in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        image = decode_image(path)
        if tuple(image.shape[-2:]) != (IMAGE_SIZE, IMAGE_SIZE):
            h, w = image.shape[-2:]
            raise DatasetFormatError(f"{path}: a {w}x{h} image; Tiny-ImageNet images are 64x64 (nothing is resized)")
        return (self.transform(image) if self.transform is not None else image), target, index


def _download(root: str) -> str:
    from torchvision.datasets.utils import download_and_extract_archive

    log.info("downloading %s to %s", URL, root)
    download_and_extract_archive(URL, root, md5=ZIP_MD5)
    return os.path.join(root, FOLDER)


@DATASETS.register("tiny_imagenet")
def build_tiny_imagenet(cfg, two_views: bool = False) -> DatasetSplits:
    root = cfg.DATASET.ROOT
    folder = find_folder(root)
    if folder is None and cfg.DATASET.DOWNLOAD:
        folder = _download(root)
    if folder is None:
        raise _missing(root, f"no {os.path.join(root, FOLDER, 'wnids.txt')}")
    wnids = read_wnids(folder)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if cfg.DATASET.NORMALIZE == "imagenet" else (
        TINY_IMAGENET_MEAN, TINY_IMAGENET_STD)
    train_list, test_list = cfg.DATASET.TRAIN_TRANSFORMS, cfg.DATASET.TEST_TRANSFORMS
    if train_list:
        geometric = [*build_transforms("DATASET.TRAIN_TRANSFORMS", train_list), FitSize(IMAGE_SIZE)]
    else:
        geometric = tiny_imagenet_geometric(cfg.DATASET.AUGMENT)
    train_tf = T.Compose([*geometric, ToFloat(), T.Normalize(mean, std)])
    if two_views:
        train_tf = two_view_transform(train_tf, geometric, mean, std)
    val_tf = (config_pipeline("DATASET.TEST_TRANSFORMS", test_list, IMAGE_SIZE, mean, std) if test_list
              else T.Compose([ToFloat(), T.Normalize(mean, std)]))
    train = TinyImageNetDataset(train_samples(folder, wnids), train_tf)
    val = TinyImageNetDataset(val_samples(folder, wnids), val_tf)
    return DatasetSplits(
        train=train,
        val=val,
        num_classes=len(wnids),
        class_names=_class_names(folder, wnids),
        input_size=(IMAGE_SIZE, IMAGE_SIZE),
        info={"path": folder, "train": len(train), "val": len(val)},
    )


build_tiny_imagenet.fixed_image_size = IMAGE_SIZE  # never resized: DATASET.IMAGE_SIZE must be 0 or 64


def _class_names(folder: str, wnids: list[str]) -> list[str]:
    """words.txt's first name for each wnid when the file is there (it is in the zip), else the wnids."""
    path = os.path.join(folder, "words.txt")
    if not os.path.isfile(path):
        return list(wnids)
    names = {}
    with open(path) as f:
        for line in f:
            wnid, _, words = line.rstrip("\n").partition("\t")
            names[wnid] = words.split(",")[0].strip() or wnid
    return [names.get(w, w) for w in wnids]
