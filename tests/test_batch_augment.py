"""Batched crop + flip + normalize vs torchvision's per-sample pipeline: same outputs, same distribution."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from kdlab.data.batch_augment import BatchCropFlipNormalize, BatchNormalize, benchmark_augment
from kdlab.data.transforms import CIFAR100_MEAN, CIFAR100_STD, cifar_train_transform

PARAMS = list(itertools.product(range(9), range(9), (False, True)))  # (top, left, flip)
# chi-square with 161 degrees of freedom exceeds 240 with probability ~5e-5
CHI2_LIMIT = 240.0


def torchvision_reference(image: torch.Tensor, top: int, left: int, flip: bool) -> torch.Tensor:
    """mdistiller's PIL path for a given crop offset and flip: pad 4, crop, flip, ToTensor, Normalize."""
    crop = TF.crop(TF.pad(TF.to_pil_image(image), 4), top, left, 32, 32)
    crop = TF.hflip(crop) if flip else crop
    return T.Normalize(CIFAR100_MEAN, CIFAR100_STD)(T.ToTensor()(crop))


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def outcome_index(image) -> dict[bytes, int]:
    """Map each possible augmented output (as bytes) to its (top, left, flip) number."""
    table = {torchvision_reference(image, *p).numpy().tobytes(): k for k, p in enumerate(PARAMS)}
    assert len(table) == len(PARAMS)  # every outcome is distinguishable on this image
    return table


def test_output_equals_torchvision_for_every_offset_and_flip(image):
    aug = BatchCropFlipNormalize(CIFAR100_MEAN, CIFAR100_STD)
    top, left, flip = (torch.tensor(v) for v in zip(*PARAMS))
    out = aug.normalize(aug.crop_flip(image.expand(len(PARAMS), -1, -1, -1), top, left, flip))
    for k, p in enumerate(PARAMS):
        assert torch.equal(out[k], torchvision_reference(image, *p)), p


def outcome_counts(outputs: torch.Tensor, table: dict[bytes, int]) -> np.ndarray:
    ids = [table[o.numpy().tobytes()] for o in outputs]  # KeyError = an output torchvision cannot produce
    return np.bincount(ids, minlength=len(PARAMS))


def chi2_uniform(counts: np.ndarray) -> float:
    expected = counts.sum() / len(counts)
    return float(((counts - expected) ** 2 / expected).sum())


def test_distribution_matches_per_sample_torchvision(image, outcome_index):
    n = 8100  # 50 draws per outcome on average
    aug = BatchCropFlipNormalize(CIFAR100_MEAN, CIFAR100_STD)
    batched = aug(image.expand(n, -1, -1, -1), torch.Generator().manual_seed(0))
    per_sample_tf = cifar_train_transform(CIFAR100_MEAN, CIFAR100_STD)
    torch.manual_seed(0)
    per_sample = torch.stack([per_sample_tf(image) for _ in range(n)])
    counts_b, counts_p = outcome_counts(batched, outcome_index), outcome_counts(per_sample, outcome_index)
    # Both uniform over the 81 offsets x 2 flips ...
    assert chi2_uniform(counts_b) < CHI2_LIMIT and chi2_uniform(counts_p) < CHI2_LIMIT
    # ... and consistent with each other (two-sample chi-square on the 2 x 162 table).
    pooled = (counts_b + counts_p) / 2
    assert float(((counts_b - pooled) ** 2 / pooled + (counts_p - pooled) ** 2 / pooled).sum()) < CHI2_LIMIT
    flips_b = counts_b[1::2].sum() / n
    assert abs(flips_b - 0.5) < 4 * 0.5 / np.sqrt(n)
    # Per-pixel mean and std over draws agree (sampling error of a mean ~0.03 here).
    assert (batched.mean(0) - per_sample.mean(0)).abs().max() < 0.15
    assert (batched.std(0) - per_sample.std(0)).abs().max() < 0.15


def test_generator_makes_draws_reproducible():
    batch = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    aug = BatchCropFlipNormalize(CIFAR100_MEAN, CIFAR100_STD)
    a = aug(batch, torch.Generator().manual_seed(3))
    b = aug(batch.contiguous(memory_format=torch.channels_last), torch.Generator().manual_seed(3))
    c = aug(batch, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.is_contiguous() and a.dtype == torch.float32


def test_no_flip_and_normalize_only():
    batch = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    aug = BatchCropFlipNormalize((0.5,) * 3, (0.25,) * 3, padding=0, flip=False)
    expected = (batch.float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(aug(batch), expected)
    torch.testing.assert_close(BatchNormalize((0.5,) * 3, (0.25,) * 3)(batch), expected)


def test_rejects_float_batches():
    with pytest.raises(TypeError, match="uint8"):
        BatchCropFlipNormalize(CIFAR100_MEAN, CIFAR100_STD)(torch.zeros(2, 3, 32, 32))


def test_benchmark_helper_reports_images_per_second():
    result = benchmark_augment(n_images=64, batch=32, per_sample_images=32)
    assert set(result) == {"batched", "per_sample", "per_sample_pil"} and all(v > 0 for v in result.values())
