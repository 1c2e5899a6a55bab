"""Per-sample transforms: mdistiller's CIFAR and ImageNet pipelines and the two-view strong one.

The transforms take uint8 CHW tensors (what the CIFAR reader stores and the JPEG decoder
returns) and draw all their randomness from torch's global RNG or python `random`, which
SeededDataset seeds per (seed, epoch, index). `ToFloat` + `Normalize` equal torchvision's
`ToTensor` + `Normalize` on the same pixels, bit for bit.

The strong view of two-view methods (MLKD) follows logit-standardization-KD's
`get_*_train_transform_strong`: an independent draw of the weak geometric augmentation,
then a FixMatch-style RandAugment (2 ops with magnitudes drawn uniformly from each op's range)
and a gray Cutout of up to half the image width, then ToFloat + Normalize.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps
from torchvision import transforms as T
from torchvision.transforms import functional as F

# mdistiller/dataset/cifar100.py
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
# The usual CIFAR-10 training-set statistics.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# mdistiller/dataset/imagenet.py
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CUTOUT_FILL = (125, 123, 114)
VAL_CROP_RATIO = 0.875  # Resize(size / 0.875) then CenterCrop(size): 256 -> 224


class ToFloat:
    """uint8 CHW tensor -> float32 in [0, 1], as ToTensor does (PIL images are converted too)."""

    def __call__(self, image):
        if isinstance(image, Image.Image):
            image = F.pil_to_tensor(image)
        return F.convert_image_dtype(image, torch.float32)

    def __repr__(self) -> str:
        return "ToFloat()"


class ToPIL:
    """uint8 CHW tensor -> PIL image (the PIL-only strong augmentation needs it)."""

    def __call__(self, image):
        return image if isinstance(image, Image.Image) else F.to_pil_image(image)

    def __repr__(self) -> str:
        return "ToPIL()"


def _shear(img: Image.Image, v: float, axis: int) -> Image.Image:
    coeffs = (1, v, 0, 0, 1, 0) if axis == 0 else (1, 0, 0, v, 1, 0)
    return img.transform(img.size, Image.AFFINE, coeffs)


def _translate(img: Image.Image, v: float, axis: int) -> Image.Image:
    shift = v * img.size[axis]
    coeffs = (1, 0, shift, 0, 1, 0) if axis == 0 else (1, 0, 0, 0, 1, shift)
    return img.transform(img.size, Image.AFFINE, coeffs)


# (name, op(img, v), low, high): the FixMatch/logit-standardization-KD list and ranges.
RANDAUGMENT_OPS: tuple[tuple[str, Callable[[Image.Image, float], Image.Image], float, float], ...] = (
    ("AutoContrast", lambda img, v: ImageOps.autocontrast(img), 0, 1),
    ("Brightness", lambda img, v: ImageEnhance.Brightness(img).enhance(v), 0.05, 0.95),
    ("Color", lambda img, v: ImageEnhance.Color(img).enhance(v), 0.05, 0.95),
    ("Contrast", lambda img, v: ImageEnhance.Contrast(img).enhance(v), 0.05, 0.95),
    ("Equalize", lambda img, v: ImageOps.equalize(img), 0, 1),
    ("Identity", lambda img, v: img, 0, 1),
    ("Posterize", lambda img, v: ImageOps.posterize(img, max(1, int(v))), 4, 8),
    ("Rotate", lambda img, v: img.rotate(v), -30, 30),
    ("Sharpness", lambda img, v: ImageEnhance.Sharpness(img).enhance(v), 0.05, 0.95),
    ("ShearX", lambda img, v: _shear(img, v, 0), -0.3, 0.3),
    ("ShearY", lambda img, v: _shear(img, v, 1), -0.3, 0.3),
    ("Solarize", lambda img, v: ImageOps.solarize(img, v), 0, 256),
    ("TranslateX", lambda img, v: _translate(img, v, 0), -0.3, 0.3),
    ("TranslateY", lambda img, v: _translate(img, v, 1), -0.3, 0.3),
)


def cutout(img: Image.Image, fraction: float, fill: Sequence[int] = CUTOUT_FILL) -> Image.Image:
    """Paint a square of side fraction * width at a uniformly random centre (clipped at the border)."""
    if fraction <= 0:
        return img
    side = fraction * img.size[0]
    w, h = img.size
    x0 = int(max(0, random.uniform(0, w) - side / 2))
    y0 = int(max(0, random.uniform(0, h) - side / 2))
    img = img.copy()
    ImageDraw.Draw(img).rectangle((x0, y0, min(w, x0 + side), min(h, y0 + side)), tuple(fill))
    return img


class RandAugmentCutout:
    """FixMatch-style RandAugment(n, m) + Cutout, as used for MLKD's strong view.

    n ops are drawn with replacement; each op's magnitude is uniform in its range (m is kept
    for the name only: the reference marks it deprecated). Then Cutout with a side of
    uniform [0, 0.5) x width. Randomness comes from python `random` (seeded per sample).
    """

    def __init__(self, n: int = 2, m: int = 10, cutout_max: float = 0.5) -> None:
        self.n, self.m, self.cutout_max = n, m, cutout_max

    def __call__(self, img: Image.Image) -> Image.Image:
        for _, op, low, high in random.choices(RANDAUGMENT_OPS, k=self.n):
            img = op(img, low + (high - low) * random.random())
        return cutout(img, random.random() * self.cutout_max)

    def __repr__(self) -> str:
        return f"RandAugmentCutout(n={self.n}, m={self.m}, cutout_max={self.cutout_max})"


class TwoViews:
    """Apply two transforms to the same image: returns (weak, strong)."""

    def __init__(self, weak: Callable, strong: Callable) -> None:
        self.weak, self.strong = weak, strong

    def __call__(self, image):
        return self.weak(image), self.strong(image)

    def __repr__(self) -> str:
        return f"TwoViews(weak={self.weak!r}, strong={self.strong!r})"


def normalize(mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    return T.Compose([ToFloat(), T.Normalize(mean, std)])


def cifar_geometric(augment: bool = True) -> list:
    """mdistiller's CIFAR augmentation: RandomCrop(32, padding=4) + RandomHorizontalFlip."""
    return [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if augment else []


def cifar_train_transform(mean, std, augment: bool = True) -> T.Compose:
    return T.Compose([*cifar_geometric(augment), ToFloat(), T.Normalize(mean, std)])


def imagenet_geometric(size: int, augment: bool = True) -> list:
    """mdistiller's ImageNet augmentation: RandomResizedCrop(size) + RandomHorizontalFlip."""
    if not augment:
        return [T.Resize(int(size / VAL_CROP_RATIO), antialias=True), T.CenterCrop(size)]
    return [T.RandomResizedCrop(size, antialias=True), T.RandomHorizontalFlip()]


def imagenet_train_transform(
    size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, augment: bool = True
) -> T.Compose:
    return T.Compose([*imagenet_geometric(size, augment), ToFloat(), T.Normalize(mean, std)])


def imagenet_val_transform(size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> T.Compose:
    """Resize the short side to size / 0.875 (256 for 224) then CenterCrop(size)."""
    return T.Compose([*imagenet_geometric(size, augment=False), ToFloat(), T.Normalize(mean, std)])


def strong_transform(geometric: list, mean, std) -> T.Compose:
    """The strong view: geometric augmentation, RandAugment(2, 10) + Cutout, normalize."""
    return T.Compose([*geometric, ToPIL(), RandAugmentCutout(2, 10), ToFloat(), T.Normalize(mean, std)])


def two_view_transform(weak: T.Compose, geometric: list, mean, std) -> TwoViews:
    return TwoViews(weak, strong_transform(geometric, mean, std))


def vit_train_transform(size: int, augment: bool = True) -> T.Compose:
    """tiny-transformers' training pipeline for ViTs on a small dataset (uint8 tensor in): timm's
    create_transform at `size` (RandomResizedCrop bicubic, flip, RandAugment rand-m9-mstd0.5-inc1, random
    erasing 0.25 per pixel), ImageNet mean/std; augment False: Resize((size, size)) and normalize."""
    if not augment:
        return vit_val_transform(size)
    from timm.data import create_transform

    return T.Compose([ToPIL(), create_transform(
        input_size=size, is_training=True, color_jitter=0.4, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25,
        re_mode="pixel", re_count=1, interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD)])


def vit_val_transform(size: int) -> T.Compose:
    """tiny-transformers' test pipeline: Resize((size, size)) (bilinear, on the PIL image), ImageNet mean/std."""
    return T.Compose([ToPIL(), T.Resize((size, size)), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
