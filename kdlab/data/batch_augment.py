"""Augmentation of whole uint8 batches on the training device (CIFAR's crop + flip + normalize).

Contract (DatasetSplits.train_batch_transform / val_batch_transform):

    out = transform(batch, generator=None)

- `batch`: uint8 tensor (N, C, H, W) on any device, any memory format (raw pixels, as the
  in-memory dataset stores them).
- `generator`: a torch.Generator; every random draw of the call comes from it (on its own
  device; the parameters are then moved to the batch's device), so one seed per step makes
  the augmentation reproducible. None uses torch's global RNG.
- returns float32 (N, C, H, W) on the batch's device, contiguous (NCHW).

`BatchCropFlipNormalize` draws, per image, a crop offset uniform in {0..2*padding}^2 of the
zero-padded image and a horizontal flip with probability 1/2 -- the distribution of
torchvision's RandomCrop(H, padding) + RandomHorizontalFlip() -- and for the same offset and
flip its output equals `ToTensor` + `Normalize` of torchvision's result bit for bit on CPU.
It pads once and gathers every crop (flipped or not) with one index grid, so the cost is a
few tensor kernels per batch instead of a Python loop over images.

Both classes are also *view spaces* (kdlab.data.teacher_cache): every outcome of the augmentation
has a view id in [0, num_views), `sample_views(n, generator)` draws exactly what `__call__` draws
(encoded), and `render(batch, views)` produces those views, so `render(batch, sample_views(n, g))`
equals `transform(batch, g')` bit for bit when g and g' start from the same seed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Optional

import torch


class BatchNormalize:
    """uint8 batch -> (x / 255 - mean) / std in float32, resized to size x size if given; the generator is ignored.

    The resize is bilinear (antialiased when shrinking) on the normalized batch, on the device.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], size: Optional[int] = None) -> None:
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.size = size
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _mean_std(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._stats:
            shape = (1, len(self.mean), 1, 1)
            self._stats[device] = (
                torch.tensor(self.mean, dtype=torch.float32, device=device).view(shape),
                torch.tensor(self.std, dtype=torch.float32, device=device).view(shape),
            )
        return self._stats[device]

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.dtype != torch.uint8:
            raise TypeError(f"expected a uint8 image batch, got {batch.dtype}")
        mean, std = self._mean_std(batch.device)
        # Same operations in the same order as ToTensor + Normalize, so results match exactly.
        out = batch.to(torch.float32).div_(255).sub_(mean).div_(std).contiguous()
        h, w = out.shape[-2:]
        if self.size and (h, w) != (self.size, self.size):
            out = torch.nn.functional.interpolate(
                out, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=self.size < h
            ).contiguous()
        return out

    def __call__(self, batch: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return self.normalize(batch)

    # The view space (kdlab.data.teacher_cache): no augmentation, one view per image.
    num_views = 1

    def view_key(self) -> dict:
        """The parameters that fix every view's pixels (part of a teacher cache's key)."""
        return {"kind": "normalize", "mean": list(self.mean), "std": list(self.std), "size": self.size}

    def sample_views(
        self, n: int, generator: Optional[torch.Generator] = None, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """View ids of n images; no draws (as __call__ makes none)."""
        return torch.zeros(n, dtype=torch.int64, device=device)

    def render(self, batch: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """The training images of the given views (here: the normalized batch)."""
        return self.normalize(batch)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_stats": {}}  # no device tensors in pickles

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std}, size={self.size})"


class BatchCropFlipNormalize(BatchNormalize):
    """Random crop with zero padding + horizontal flip + normalize, for a whole uint8 batch."""

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], padding: int = 4, flip: bool = True,
        size: Optional[int] = None,
    ) -> None:
        super().__init__(mean, std, size)
        self.padding, self.flip = padding, flip

    def sample_params(
        self, n: int, generator: Optional[torch.Generator] = None, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (top, left, flip) for n images: offsets into the padded image, flip as bool."""
        draw_device = generator.device if generator is not None else torch.device(device)
        span = 2 * self.padding + 1
        top = torch.randint(0, span, (n,), generator=generator, device=draw_device)
        left = torch.randint(0, span, (n,), generator=generator, device=draw_device)
        if self.flip:
            flip = torch.rand(n, generator=generator, device=draw_device) < 0.5
        else:
            flip = torch.zeros(n, dtype=torch.bool, device=draw_device)
        return top.to(device), left.to(device), flip.to(device)

    def crop_flip(
        self, batch: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor
    ) -> torch.Tensor:
        """Crop each image of the zero-padded batch at (top, left), flipping where flip is True."""
        n, c, h, w = batch.shape
        p = self.padding
        # Zeros + slice copy: much faster than F.pad for uint8 on CPU.
        padded = batch.new_zeros((n, c, h + 2 * p, w + 2 * p))
        padded[:, :, p : p + h, p : p + w] = batch
        return gather_crops(padded, top, left, (h, w), flip)

    def __call__(self, batch: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        _check_batch(batch)
        top, left, flip = self.sample_params(batch.shape[0], generator, batch.device)
        return self.normalize(self.crop_flip(batch, top, left, flip))

    # The view space: view = (top * (2p + 1) + left) * F + flip, F = 2 with flips, else 1.
    @property
    def num_views(self) -> int:
        return (2 * self.padding + 1) ** 2 * (2 if self.flip else 1)

    def view_key(self) -> dict:
        return {**super().view_key(), "kind": "crop_flip", "padding": self.padding, "flip": self.flip}

    def encode_views(self, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        """(top, left, flip) -> view ids (int64)."""
        flips = 2 if self.flip else 1
        return (top.long() * (2 * self.padding + 1) + left.long()) * flips + flip.long()

    def decode_views(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """View ids -> (top, left, flip), as sample_params returns them."""
        flips = 2 if self.flip else 1
        offset, flip = views.long().div(flips, rounding_mode="floor"), views.long().remainder(flips).bool()
        span = 2 * self.padding + 1
        return offset.div(span, rounding_mode="floor"), offset.remainder(span), flip

    def sample_views(
        self, n: int, generator: Optional[torch.Generator] = None, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """The draws of sample_params, encoded: render(batch, sample_views(n, g)) == __call__(batch, g') bit for
        bit when g and g' start from the same seed."""
        return self.encode_views(*self.sample_params(n, generator, device))

    def render(self, batch: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """The batch augmented with the given view ids (N,) and normalized."""
        _check_batch(batch)
        return self.normalize(self.crop_flip(batch, *self.decode_views(views.to(batch.device))))

    def __repr__(self) -> str:
        args = f"padding={self.padding}, flip={self.flip}, mean={self.mean}, std={self.std}, size={self.size}"
        return f"BatchCropFlipNormalize({args})"


def gather_crops(
    padded: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: tuple[int, int],
    flip: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Image k's h x w crop at (top[k], left[k]) of a padded batch (N, C, Hp, Wp), mirrored where flip[k]:
    one index grid and one gather for the whole batch."""
    n, c, _, wp = padded.shape
    h, w = size
    rows = top.view(n, 1) + torch.arange(h, device=padded.device)
    cols = torch.arange(w, device=padded.device)
    cols = left.view(n, 1) + (torch.where(flip.view(n, 1), w - 1 - cols, cols) if flip is not None else cols)
    index = (rows.view(n, h, 1) * wp + cols.view(n, 1, w)).view(n, 1, h * w).expand(n, c, h * w)
    return padded.reshape(n, c, -1).gather(2, index).view(n, c, h, w)


def _check_batch(batch: torch.Tensor) -> None:
    if batch.dtype != torch.uint8 or batch.dim() != 4:
        raise TypeError(f"expected a uint8 (N, C, H, W) batch, got {batch.dtype} {tuple(batch.shape)}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _images_per_second(fn, n_images: int, device: torch.device) -> float:
    fn()  # warm-up (allocations, kernel selection)
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return n_images / max(time.perf_counter() - start, 1e-9)


def benchmark_augment(
    n_images: int = 4096, batch: int = 256, device: str = "cpu", per_sample_images: int | None = None
) -> dict[str, float]:
    """Images/s of CIFAR train augmentation: batched on `device` vs per-sample on the CPU.

    Keys: "batched" (BatchCropFlipNormalize), "per_sample" (torchvision on uint8 tensors, the
    dataset's path, plus batching with torch.stack) and "per_sample_pil" (mdistiller's
    PIL pipeline). Per-sample paths run on per_sample_images (default min(n_images, 2048)).
    """
    from PIL import Image
    from torchvision import transforms as T

    from kdlab.data.transforms import CIFAR100_MEAN, CIFAR100_STD, cifar_train_transform

    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n_images, 3, 32, 32), dtype=torch.uint8, generator=g)
    on_device = images.to(dev)
    aug = BatchCropFlipNormalize(CIFAR100_MEAN, CIFAR100_STD)
    dev_gen = torch.Generator(device=dev).manual_seed(0)

    def batched() -> None:
        for i in range(0, n_images, batch):
            aug(on_device[i : i + batch], dev_gen)

    m = min(n_images, per_sample_images or 2048)
    tensor_tf = cifar_train_transform(CIFAR100_MEAN, CIFAR100_STD)
    pil_tf = T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(CIFAR100_MEAN, CIFAR100_STD),
        ]
    )
    hwc = images[:m].permute(0, 2, 3, 1).numpy()

    def per_sample() -> None:
        for i in range(0, m, batch):
            torch.stack([tensor_tf(im) for im in images[i : min(i + batch, m)]])

    def per_sample_pil() -> None:
        for i in range(0, m, batch):
            torch.stack([pil_tf(Image.fromarray(im)) for im in hwc[i : min(i + batch, m)]])

    cpu = torch.device("cpu")
    return {
        "batched": _images_per_second(batched, n_images, dev),
        "per_sample": _images_per_second(per_sample, m, cpu),
        "per_sample_pil": _images_per_second(per_sample_pil, m, cpu),
    }
