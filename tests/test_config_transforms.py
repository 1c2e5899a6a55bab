"""DATASET.TRAIN_TRANSFORMS / TEST_TRANSFORMS (kdlab/data/config_transforms.py) and CIFAR at other sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from fixtures_data import write_cifar, write_imagefolder_dataset, write_voc

from kdlab.config import load_cfg
from kdlab.data import build_dataloaders, build_datasets
from kdlab.data.transforms import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD
from kdlab.errors import ConfigError

JITTER = [{"ColorJitter": {"brightness": 0.4, "contrast": [0.6, 1.4]}}, "RandomGrayscale",
          {"RandomRotation": {"degrees": 15, "interpolation": "bilinear"}}]


def test_yaml_and_command_line_give_the_same_list(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"DATASET": {"TYPE": "digits", "TRAIN_TRANSFORMS": JITTER}}))
    from_yaml = load_cfg(str(path)).DATASET.TRAIN_TRANSFORMS
    cli = load_cfg(None, ["DATASET.TYPE", "digits", "DATASET.TRAIN_TRANSFORMS", repr(JITTER)])
    from_cli = cli.DATASET.TRAIN_TRANSFORMS
    assert from_yaml == from_cli == JITTER
    # the resolved config (config.yaml of a run) reads back the same
    dumped = load_cfg(str(path)).dump()
    (tmp_path / "again.yaml").write_text(dumped)
    assert load_cfg(str(tmp_path / "again.yaml")).DATASET.TRAIN_TRANSFORMS == JITTER


@pytest.mark.parametrize("value, message", [
    ("['RandomRotaton']",
     r"DATASET\.TRAIN_TRANSFORMS\[0\]: unknown transform 'RandomRotaton'; did you mean RandomRotation"),
    ("['RandomHorizontalFlip', {'ColorJitter': {'brightnes': 0.4}}]",
     r"DATASET\.TRAIN_TRANSFORMS\[1\]: ColorJitter takes no argument 'brightnes'; did you mean brightness\?"),
    ("[{'GaussianBlur': {'kernel_size': 4}}]", r"GaussianBlur\(kernel_size=4\) is refused by torchvision"),
    ("[{'Resize': 8, 'Pad': 1}]", r"expected a transform name or a one-key mapping"),
    ("['Normalize']", r"unknown transform 'Normalize'"),  # kdlab normalizes itself
])
def test_bad_entries_are_one_line_errors_at_load(value, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_cfg(None, ["DATASET.TYPE", "digits", "DATASET.TRAIN_TRANSFORMS", value])
    assert "\n" not in str(info.value)


def test_normalize_values_are_checked():
    with pytest.raises(ConfigError, match=r"DATASET\.NORMALIZE: unknown value 'imagenett'.*did you mean imagenet"):
        load_cfg(None, ["DATASET.NORMALIZE", "imagenett"])
    with pytest.raises(ConfigError, match=r"DATASET\.NORMALIZE imagenet: digits images have one channel"):
        load_cfg(None, ["DATASET.TYPE", "digits", "DATASET.NORMALIZE", "imagenet"])


def _cifar(tmp_path, *opts):
    write_cifar(tmp_path, "cifar10", n_train=20, n_test=10)
    cfg = load_cfg(None, ["DATASET.TYPE", "cifar10", "DATASET.ROOT", str(tmp_path), "DATASET.NUM_WORKERS", "0",
                          *opts])
    return build_datasets(cfg)


def test_cifar_default_list_keeps_the_batched_path_and_a_list_goes_per_sample(tmp_path):
    splits = _cifar(tmp_path)
    assert splits.train_batch_transform is not None and splits.train[0][0].dtype == torch.uint8
    flip = _cifar(tmp_path, "DATASET.TRAIN_TRANSFORMS", "[{'RandomHorizontalFlip': {'p': 1.0}}]")
    assert flip.train_batch_transform is None and flip.val_batch_transform is not None  # the test side is unchanged
    raw = splits.train.images[3]
    mean, std = torch.tensor(CIFAR10_MEAN).view(3, 1, 1), torch.tensor(CIFAR10_STD).view(3, 1, 1)
    expected = (raw.flip(-1).float() / 255 - mean) / std  # the list only, no built-in crop
    torch.testing.assert_close(flip.train[3][0], expected)
    test_side = _cifar(tmp_path, "DATASET.TEST_TRANSFORMS", "[{'RandomVerticalFlip': {'p': 1.0}}]")
    assert test_side.val_batch_transform is None and test_side.train_batch_transform is not None
    torch.testing.assert_close(test_side.val[2][0], (test_side.val.images[2].flip(-2).float() / 255 - mean) / std)


def test_cifar_resized_to_224_with_imagenet_statistics_on_both_paths(tmp_path):
    for gpu in ("True", "False"):
        splits = _cifar(tmp_path, "DATASET.IMAGE_SIZE", "224", "DATASET.GPU_AUGMENT", gpu, "DATASET.AUGMENT", "False")
        assert splits.input_size == (224, 224) and splits.info["normalize"] == "imagenet"
        train, _, _ = build_dataloaders(splits=splits, cfg=load_cfg(None, ["DATASET.NUM_WORKERS", "0"]))
        image = splits.val[0][0] if gpu == "False" else splits.val_batch_transform(splits.val[0][0][None])[0]
        assert image.shape == (3, 224, 224)
        # a uniform image stays uniform: its value is ImageNet-normalized
        flat = splits.val.images[0].clone()
        flat[:] = 255
        one = splits.val.transform(flat) if gpu == "False" else splits.val_batch_transform(flat[None])[0]
        torch.testing.assert_close(one[:, 100, 100], (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD))
    own = _cifar(tmp_path, "DATASET.IMAGE_SIZE", "224", "DATASET.NORMALIZE", "dataset")
    assert own.info["normalize"] == "cifar10" and own.val_batch_transform.mean == CIFAR10_MEAN
    assert _cifar(tmp_path, "DATASET.NORMALIZE", "imagenet").val_batch_transform.mean == IMAGENET_MEAN
    assert _cifar(tmp_path).val_batch_transform.mean == CIFAR10_MEAN  # auto at 32: CIFAR's own


def test_digits_list_runs_on_unit_pixels_before_standardization():
    plain = build_datasets(load_cfg(None, ["DATASET.TYPE", "digits", "DATASET.AUGMENT", "False"]))
    listed = build_datasets(load_cfg(None, ["DATASET.TYPE", "digits", "DATASET.TRAIN_TRANSFORMS",
                                            "[{'RandomHorizontalFlip': {'p': 1.0}}]"]))
    torch.testing.assert_close(listed.train[5][0], plain.train[5][0].flip(-1))
    torch.testing.assert_close(listed.val[5][0], plain.val[5][0])  # the test side is standardized alike


def test_imagefolder_list_replaces_the_crop_and_fits_the_size(tmp_path):
    write_imagefolder_dataset(tmp_path, "imagenette2-160", size=(50, 40))
    cfg = load_cfg(None, ["DATASET.TYPE", "imagenette", "DATASET.ROOT", str(tmp_path), "DATASET.IMAGE_SIZE", "32",
                          "DATASET.TRAIN_TRANSFORMS", "['RandomGrayscale']",
                          "DATASET.TEST_TRANSFORMS", "[{'CenterCrop': 40}]"])
    splits = build_datasets(cfg)
    assert splits.train[0][0].shape == splits.val[0][0].shape == (3, 32, 32)  # FitSize squashes 50x40 to 32x32


def test_voc_list_moves_image_and_mask_together(tmp_path):
    write_voc(tmp_path, n_train=2, n_val=2, size=(48, 40))
    opts = ["DATASET.TYPE", "voc", "DATASET.ROOT", str(tmp_path), "DATASET.IMAGE_SIZE", "48", "DISTILLER.TYPE", "NONE",
            "DISTILLER.STUDENT", "lraspp_mobilenet_v3_large"]
    base = build_datasets(load_cfg(None, [*opts, "DATASET.TRAIN_TRANSFORMS", "[{'Resize': [48, 48]}]"]))
    flipped = build_datasets(load_cfg(None, [*opts, "DATASET.TRAIN_TRANSFORMS",
                                             "[{'Resize': [48, 48]}, {'RandomHorizontalFlip': {'p': 1.0}}]"]))
    (img, mask, _), (fimg, fmask, _) = base.train[1], flipped.train[1]
    assert torch.equal(fmask, mask.flip(-1)) and torch.allclose(fimg, img.flip(-1))
    assert set(np.unique(mask.numpy())) <= set(range(21)) | {255}  # nearest-neighbour: labels stay labels
    rotated = build_datasets(load_cfg(None, [*opts, "DATASET.TRAIN_TRANSFORMS",
                                             "[{'Resize': [48, 48]}, {'RandomRotation': {'degrees': [45, 45]}}]"]))
    corner = rotated.train[1][1][0, 0]
    assert corner.item() == 255  # pixels rotated in are ignored, not background


def test_two_view_methods_get_the_list_in_both_views(tmp_path):
    write_cifar(tmp_path, "cifar10", n_train=20, n_test=10)
    cfg = load_cfg(None, ["DATASET.TYPE", "cifar10", "DATASET.ROOT", str(tmp_path), "DATASET.IMAGE_SIZE", "48",
                          "DATASET.TRAIN_TRANSFORMS", "[{'RandomHorizontalFlip': {'p': 1.0}}]"])
    splits = build_datasets(cfg, two_views=True)
    (weak, strong), _, _ = splits.train[0]
    assert weak.shape == strong.shape == (3, 48, 48) and not torch.equal(weak, strong)  # strong adds RandAugment
    digits = build_datasets(load_cfg(None, ["DATASET.TYPE", "digits", "DATASET.TRAIN_TRANSFORMS",
                                            "[{'RandomHorizontalFlip': {'p': 1.0}}]"]), two_views=True)
    (a, b), _, _ = digits.train[0]
    assert torch.equal(a, b) and a.shape == (1, 8, 8)
