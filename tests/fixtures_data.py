"""Write tiny datasets in the real on-disk formats (CIFAR python pickles, class-per-folder JPEGs).

Plain functions, imported by tests/conftest.py and the data tests. Nothing here touches the
network.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGENETTE_WNIDS = [
    "n01440764",
    "n02102040",
    "n02979186",
    "n03000684",
    "n03028079",
    "n03394916",
    "n03417042",
    "n03425413",
    "n03445777",
    "n03888257",
]


def _dump(obj, path: Path, protocol: int) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def _cifar_split(rng: np.random.Generator, n: int, num_classes: int) -> tuple[np.ndarray, list[int]]:
    labels = [int(i % num_classes) for i in range(n)]
    rng.shuffle(labels)
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), labels


def write_cifar(
    root: str | os.PathLike,
    kind: str = "cifar100",
    n_train: int = 20,
    n_test: int = 10,
    seed: int = 0,
    protocol: int = 2,
) -> dict:
    """Write `cifar-10-batches-py/` or `cifar-100-python/` under root, keys as bytes like the real files.

    Protocol 2 is what the real (Python 2 cPickle) files use. Returns what was written:
    {"x_train", "y_train", "x_test", "y_test" (uint8 N x 3 x 32 x 32 / int lists), "class_names", "folder"}.
    """
    rng = np.random.default_rng(seed)
    num_classes = 10 if kind == "cifar10" else 100
    x_tr, y_tr = _cifar_split(rng, n_train, num_classes)
    x_te, y_te = _cifar_split(rng, n_test, num_classes)
    root = Path(root)
    if kind == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        names = CIFAR10_NAMES
        for i, part in enumerate(np.array_split(np.arange(n_train), 5), start=1):
            _dump(
                {
                    b"batch_label": f"training batch {i} of 5".encode(),
                    b"labels": [y_tr[j] for j in part],
                    b"data": x_tr[part],
                    b"filenames": [f"img_{j}.png".encode() for j in part],
                },
                folder / f"data_batch_{i}",
                protocol,
            )
        _dump(
            {
                b"batch_label": b"testing batch 1 of 1",
                b"labels": y_te,
                b"data": x_te,
                b"filenames": [f"test_{j}.png".encode() for j in range(n_test)],
            },
            folder / "test_batch",
            protocol,
        )
        _dump(
            {
                b"num_cases_per_batch": max(1, n_train // 5),
                b"label_names": [n.encode() for n in names],
                b"num_vis": 3072,
            },
            folder / "batches.meta",
            protocol,
        )
    elif kind == "cifar100":
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        names = [f"fine_{i:02d}" for i in range(100)]
        for split, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
            _dump(
                {
                    b"filenames": [f"{split}_{j}.png".encode() for j in range(len(y))],
                    b"batch_label": f"{split} batch".encode(),
                    b"fine_labels": y,
                    b"coarse_labels": [label // 5 for label in y],
                    b"data": x,
                },
                folder / split,
                protocol,
            )
        _dump(
            {
                b"fine_label_names": [n.encode() for n in names],
                b"coarse_label_names": [f"coarse_{i:02d}".encode() for i in range(20)],
            },
            folder / "meta",
            protocol,
        )
    else:
        raise ValueError(f"kind must be cifar10 or cifar100, got {kind!r}")
    return {
        "x_train": x_tr.reshape(-1, 3, 32, 32),
        "y_train": y_tr,
        "x_test": x_te.reshape(-1, 3, 32, 32),
        "y_test": y_te,
        "class_names": names,
        "folder": folder,
    }


def class_color(target: int) -> tuple[int, int, int]:
    """A distinct solid colour per class, so a test can tell which class an image came from."""
    return (30 + 20 * target) % 256, (200 - 15 * target) % 256, (60 * target) % 256


def write_jpeg(
    path: str | os.PathLike, size: tuple[int, int] = (50, 40), color=(128, 128, 128), seed: int = 0
) -> None:
    """A JPEG of size (width, height): a solid colour with a little noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    pixels = np.clip(np.array(color, dtype=np.int16) + rng.integers(-8, 9, (h, w, 3)), 0, 255).astype(
        np.uint8
    )
    Image.fromarray(pixels).save(path, format="JPEG", quality=95)


def write_imagefolder_dataset(
    root: str | os.PathLike,
    layout: str = "imagenette2-160",
    wnids: list[str] | None = None,
    n_train: int = 2,
    n_val: int = 2,
    size: tuple[int, int] = (50, 40),
) -> Path:
    """Write `train/<wnid>/*.JPEG` and `val/<wnid>/*.JPEG` and return the dataset folder.

    layout "imagenette2", "imagenette2-320" or "imagenette2-160" writes under root/<layout>/;
    "imagenet" writes train/ and val/ directly under root (DATASET.ROOT for ImageNet).
    Images of class k (sorted wnid order) are class_color(k) plus noise, `size` = (width, height).
    """
    base = Path(root) if layout == "imagenet" else Path(root) / layout
    wnids = sorted(wnids or IMAGENETTE_WNIDS)
    for split, n in (("train", n_train), ("val", n_val)):
        for target, wnid in enumerate(wnids):
            folder = base / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                name = f"{wnid}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{target:04d}{i:04d}.JPEG"
                write_jpeg(folder / name, size, class_color(target), seed=target * 100 + i)
    return base


TINY_IMAGENET_WNIDS = ["n02124075", "n01443537", "n09246464"]  # wnids.txt's order is not sorted


def write_tiny_imagenet(
    root: str | os.PathLike, wnids: list[str] | None = None, n_train: int = 2, n_val: int = 2, seed: int = 0
) -> dict:
    """Write `tiny-imagenet-200/` under root as the official zip unpacks: wnids.txt, words.txt,
    train/<wnid>/images/<wnid>_<i>.JPEG (+ <wnid>_boxes.txt), val/images/val_<i>.JPEG with
    val/val_annotations.txt, and an unlabelled test/images/. 64x64 JPEGs of class_color(k), k the
    wnid's sorted position; the val images are shuffled so the file order does not follow the classes.
    Returns {"folder", "wnids" (sorted), "val" ([(file name, target)] in annotation order)}.
    """
    wnids = list(wnids or TINY_IMAGENET_WNIDS)
    order = sorted(wnids)
    base = Path(root) / "tiny-imagenet-200"
    (base / "val" / "images").mkdir(parents=True, exist_ok=True)
    (base / "test" / "images").mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    (base / "words.txt").write_text("".join(f"{w}\tclass {w}, other name\n" for w in wnids))
    for wnid in wnids:
        folder = base / "train" / wnid / "images"
        folder.mkdir(parents=True, exist_ok=True)
        target = order.index(wnid)
        for i in range(n_train):
            write_jpeg(folder / f"{wnid}_{i}.JPEG", (64, 64), class_color(target), seed=seed + target * 100 + i)
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text(
            "".join(f"{wnid}_{i}.JPEG\t0\t0\t63\t63\n" for i in range(n_train)))
    labels = [order[k % len(order)] for k in range(n_val * len(order))]
    np.random.default_rng(seed).shuffle(labels)
    val = []
    for i, wnid in enumerate(labels):
        write_jpeg(base / "val" / "images" / f"val_{i}.JPEG", (64, 64), class_color(order.index(wnid)), seed=seed + i)
        val.append((f"val_{i}.JPEG", order.index(wnid)))
    (base / "val" / "val_annotations.txt").write_text(
        "".join(f"{name}\t{order[t]}\t0\t0\t63\t63\n" for name, t in val))
    write_jpeg(base / "test" / "images" / "test_0.JPEG", (64, 64))
    return {"folder": base, "wnids": order, "val": val}


class _CreatesFile:
    """Unpickling this calls open(path, 'w'): the shape of a malicious pickle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def write_malicious_pickle(path: str | os.PathLike, marker: str | os.PathLike, protocol: int = 2) -> None:
    """A CIFAR-looking batch whose unpickling would create `marker` (if loaded with plain pickle)."""
    payload = {b"data": _CreatesFile(str(marker)), b"labels": [0]}
    with open(path, "wb") as f:
        pickle.dump(payload, f, protocol=protocol)


# ---------------------------------------------------------------- PASCAL VOC (segmentation)
def voc_palette() -> list[int]:
    """VOC's 256-colour palette (the bit-interleaved colour map of the devkit), as a flat RGB list."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def write_voc_mask(path: str | os.PathLike, labels: np.ndarray) -> None:
    """A palette ('P') PNG whose pixel values are the class indices in `labels` (H x W uint8)."""
    from PIL import Image

    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    img.putpalette(voc_palette())
    img.save(path, format="PNG")


def voc_labels(index: int, size: tuple[int, int] = (48, 40), num_classes: int = 21) -> np.ndarray:
    """A (height, width) mask for image `index`: background, one object rectangle, a 255 border around it."""
    w, h = size
    labels = np.zeros((h, w), dtype=np.uint8)
    cls = 1 + index % (num_classes - 1)
    y0, x0 = 4 + index % 5, 6 + index % 7
    labels[y0 - 1 : y0 + h // 2 + 1, x0 - 1 : x0 + w // 2 + 1] = 255
    labels[y0 : y0 + h // 2, x0 : x0 + w // 2] = cls
    return labels


def write_voc(
    root: str | os.PathLike,
    n_train: int = 6,
    n_val: int = 4,
    size: tuple[int, int] = (48, 40),
) -> dict:
    """Write `VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation}` under root.

    Image i (size = (width, height)) is grey with its object rectangle painted class_color(cls), and
    its mask (voc_labels) is a palette PNG. Returns {"base", "train_ids", "val_ids", "labels": {id: mask}}.
    """
    from PIL import Image

    base = Path(root) / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    ids = [f"2007_{i:06d}" for i in range(n_train + n_val)]
    all_labels = {}
    for i, image_id in enumerate(ids):
        labels = voc_labels(i, size)
        pixels = np.full((*labels.shape, 3), 128, dtype=np.uint8)
        for cls in np.unique(labels):
            if cls not in (0, 255):
                pixels[labels == cls] = class_color(int(cls))
        Image.fromarray(pixels).save(base / "JPEGImages" / f"{image_id}.jpg", format="JPEG", quality=95)
        write_voc_mask(base / "SegmentationClass" / f"{image_id}.png", labels)
        all_labels[image_id] = labels
    train_ids, val_ids = ids[:n_train], ids[n_train:]
    (base / "ImageSets/Segmentation/train.txt").write_text("".join(f"{i}\n" for i in train_ids))
    (base / "ImageSets/Segmentation/val.txt").write_text("".join(f"{i}\n" for i in val_ids))
    return {"base": base, "train_ids": train_ids, "val_ids": val_ids, "labels": all_labels}
