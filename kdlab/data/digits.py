"""scikit-learn's bundled 8x8 digits: the embedded default dataset, no download needed.

Split: 80 % train / 20 % test, stratified, `train_test_split(random_state=0)` -- fixed,
independent of EXPERIMENT.SEED, so every run is evaluated on the same 360 images.
Images are 1x8x8 float tensors, pixel values /16 then standardized with the training
set's mean and std. A DATASET.TRAIN_TRANSFORMS / TEST_TRANSFORMS list runs on the [0, 1]
image before that standardization (and replaces the built-in 1-pixel shift for training).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from kdlab.data.batch_augment import gather_crops
from kdlab.data.build import DATASETS, DatasetSplits
from kdlab.data.config_transforms import config_pipeline
from kdlab.data.transforms import TwoViews

SPLIT_SEED = 0
TEST_FRACTION = 0.2


class TensorImageDataset(Dataset):
    """In-memory (image, target, index) dataset with an optional per-sample transform.

    With `return_views` (set while a teacher-output cache serves the run) items are (image, target, index, view):
    the transform is a view space (RandomShift) and `view` the id of the outcome it drew (0 without a transform).
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, transform=None) -> None:
        self.images, self.targets, self.transform = images, targets, transform
        self.return_views = False

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.return_views:
            if self.transform is None:
                return image, int(self.targets[index]), index, 0
            view = self.transform.sample_view()
            return self.transform.apply(image, view), int(self.targets[index]), index, view
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index]), index


class RandomShift:
    """Random translation by up to `pad` pixels, new pixels set to `fill` (the background).

    A view space (kdlab.data.teacher_cache): view = i * (2 * pad + 1) + j for the crop at (i, j) of
    the padded image; `__call__` draws (i, j) from the torch RNG with one randint call.
    """

    def __init__(self, pad: int = 1, fill: float = 0.0) -> None:
        self.pad, self.fill = int(pad), float(fill)

    @property
    def num_views(self) -> int:
        return (2 * self.pad + 1) ** 2

    def view_key(self) -> dict:
        """The parameters that fix every view's pixels (part of a teacher cache's key)."""
        return {"kind": "shift", "pad": self.pad, "fill": self.fill}

    def sample_view(self) -> int:
        i, j = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
        return i * (2 * self.pad + 1) + j

    def apply(self, image: torch.Tensor, view: int) -> torch.Tensor:
        """The image (..., H, W) shifted as view `view` says."""
        h, w = image.shape[-2:]
        i, j = divmod(int(view), 2 * self.pad + 1)
        padded = torch.nn.functional.pad(image, (self.pad,) * 4, value=self.fill)
        return padded[..., i : i + h, j : j + w]

    def render(self, batch: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """A batch (N, C, H, W), image k shifted as views[k] says."""
        span = 2 * self.pad + 1
        padded = torch.nn.functional.pad(batch, (self.pad,) * 4, value=self.fill)
        views = views.to(batch.device).long()
        top, left = views.div(span, rounding_mode="floor"), views.remainder(span)
        return gather_crops(padded, top, left, tuple(batch.shape[-2:]))

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.apply(image, self.sample_view())

    def __repr__(self) -> str:
        return f"RandomShift(pad={self.pad}, fill={self.fill})"


def load_digits_raw() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): float32 N x 1 x 8 x 8 images in [0, 1] (pixel / 16), int64 targets."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.astype("float32") / 16.0
    y = digits.target.astype("int64")
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    x_tr, x_te = torch.from_numpy(x_tr)[:, None], torch.from_numpy(x_te)[:, None]
    return x_tr, torch.from_numpy(y_tr), x_te, torch.from_numpy(y_te)


def load_digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (x_train, y_train, x_test, y_test) as float32 N x 1 x 8 x 8 and int64 tensors."""
    x_tr, y_tr, x_te, y_te = load_digits_raw()
    mean, std = x_tr.mean(), x_tr.std()
    return (x_tr - mean) / std, y_tr, (x_te - mean) / std, y_te


class DigitsTwoViews:
    """(weak, strong) views for two-view methods (MLKD).

    weak: the usual digits augmentation, a random shift of up to 1 pixel.
    strong: a random shift of up to 2 pixels, then with probability 0.5 random erasing of a
    rectangle covering 5-25 % of the 8x8 image (aspect ratio 0.5-2), filled with the background
    value, so part of a stroke disappears (torchvision's RandomErasing). Both draw from the torch
    RNG, which the loader seeds per (seed, epoch, index).
    """

    def __init__(self, background: float) -> None:
        from torchvision.transforms import RandomErasing

        self.background = background
        self.weak_shift, self.strong_shift = RandomShift(1, background), RandomShift(2, background)
        self.erase = RandomErasing(p=0.5, scale=(0.05, 0.25), ratio=(0.5, 2.0), value=background)

    def weak(self, image: torch.Tensor) -> torch.Tensor:
        return self.weak_shift(image)

    def strong(self, image: torch.Tensor) -> torch.Tensor:
        return self.erase(self.strong_shift(image))

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weak(image), self.strong(image)


def _identity_views(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return image, image


def _configured(key: str, entries, two_views: bool, mean: float, std: float):
    """A DATASET.*_TRANSFORMS list on the [0, 1] image, then standardization (both views alike for two views)."""
    tf = config_pipeline(key, entries, 8, [mean], [std])
    return TwoViews(tf, tf) if two_views else tf


@DATASETS.register("digits")
def build_digits(cfg, two_views: bool = False) -> DatasetSplits:
    train_list, test_list = cfg.DATASET.TRAIN_TRANSFORMS, cfg.DATASET.TEST_TRANSFORMS
    if train_list or test_list:  # the lists see [0, 1] pixels; each split is standardized at the end
        raw_tr, y_tr, raw_te, y_te = load_digits_raw()
        mean, std = raw_tr.mean().item(), raw_tr.std().item()
        x_tr, x_te = (raw_tr - mean) / std, (raw_te - mean) / std
    else:
        x_tr, y_tr, x_te, y_te = load_digits_split()
    background = float(x_tr.min())  # raw 0 is the smallest standardized pixel value
    train_tf = RandomShift(pad=1, fill=background) if cfg.DATASET.AUGMENT else None
    if two_views:  # without DATASET.AUGMENT both views are the unaugmented image
        train_tf = DigitsTwoViews(background=background) if cfg.DATASET.AUGMENT else _identity_views
    val_tf = None
    if train_list or test_list:  # both splits keep [0, 1] pixels (a held-out split takes the test pipeline)
        standardize = config_pipeline("DATASET.TEST_TRANSFORMS", [], 8, [mean], [std])
        x_tr, x_te, val_tf = raw_tr, raw_te, standardize
        train_tf = v2.Compose([standardize, train_tf]) if train_tf is not None else standardize
    if train_list:
        train_tf = _configured("DATASET.TRAIN_TRANSFORMS", train_list, two_views, mean, std)
    if test_list:
        val_tf = _configured("DATASET.TEST_TRANSFORMS", test_list, False, mean, std)
    return DatasetSplits(
        train=TensorImageDataset(x_tr, y_tr, train_tf),
        val=TensorImageDataset(x_te, y_te, val_tf),
        num_classes=10,
        class_names=[str(i) for i in range(10)],
        in_channels=1,
        input_size=(8, 8),
        info={"split": f"stratified 80/20, random_state={SPLIT_SEED}", "train": len(y_tr), "test": len(y_te)},
    )


build_digits.fixed_image_size = 8  # never resized: DATASET.IMAGE_SIZE must be 0 or 8 (checked at load time)
