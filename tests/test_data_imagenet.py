"""Imagenette and ImageNet (class-per-folder JPEGs): discovery, decoding, errors, transforms, loaders."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from fixtures_data import IMAGENETTE_WNIDS, class_color, write_imagefolder_dataset, write_jpeg

from kdlab.config import get_cfg
from kdlab.data import build_dataloaders, build_datasets
from kdlab.data.imagenet import choose_imagenette_variant, decode_image
from kdlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from kdlab.errors import ConfigError, DatasetFormatError, DatasetNotFoundError

IMAGENETTE_NAMES = [
    "tench",
    "English springer",
    "cassette player",
    "chain saw",
    "church",
    "French horn",
    "garbage truck",
    "gas pump",
    "golf ball",
    "parachute",
]


def folder_cfg(root, kind="imagenette", **dataset):
    cfg = get_cfg()
    cfg.DATASET.TYPE = kind
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NUM_WORKERS = 0
    for key, value in dataset.items():
        cfg.DATASET[key] = value
    return cfg


def unnormalize_mean(image: torch.Tensor) -> np.ndarray:
    """Mean RGB (0..255) of a normalized image."""
    x = image * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    return (x.mean(dim=(1, 2)) * 255).numpy()


@pytest.fixture(scope="module")
def imagenette_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenette")
    write_imagefolder_dataset(root, "imagenette2-160", n_train=3, n_val=2)
    return root


def test_imagenette_found_automatically_with_names_and_labels(imagenette_root):
    splits = build_datasets(folder_cfg(imagenette_root), two_views=False)
    assert splits.info["variant"] == "imagenette2-160"
    assert splits.info["path"] == str(imagenette_root / "imagenette2-160")
    assert (splits.num_classes, len(splits.train), len(splits.val)) == (10, 30, 20)
    assert splits.class_names == IMAGENETTE_NAMES and splits.input_size == (160, 160)
    for index in (0, 7, 19):  # val: Resize + CenterCrop keeps each class's colour
        image, target, i = splits.val[index]
        assert image.shape == (3, 160, 160) and i == index and target == index // 2
        np.testing.assert_allclose(unnormalize_mean(image), class_color(target), atol=4)
    image, target, _ = splits.train[4]
    assert image.shape == (3, 160, 160) and image.dtype == torch.float32 and target == 1


def test_imagenette_two_views_and_loader(imagenette_root):
    cfg = folder_cfg(imagenette_root, IMAGE_SIZE=64)
    splits = build_datasets(cfg, two_views=True)
    (weak, strong), _, _ = splits.train[0]
    assert weak.shape == strong.shape == (3, 64, 64)
    cfg.SOLVER.BATCH_SIZE = 8
    train, val, num_classes = build_dataloaders(cfg, two_views=False)
    image, target, index = next(iter(train))
    assert num_classes == 10 and image.shape == (8, 3, 64, 64) and target.shape == (8,)
    assert sum(len(b[1]) for b in val) == 20


def test_variant_choice(tmp_path):
    for layout in ("imagenette2-160", "imagenette2-320"):
        write_imagefolder_dataset(tmp_path, layout, wnids=IMAGENETTE_WNIDS[:2], n_train=1, n_val=1)
    assert choose_imagenette_variant(str(tmp_path), "", 0)[0] == "imagenette2-160"
    assert choose_imagenette_variant(str(tmp_path), "", 160)[0] == "imagenette2-160"
    assert choose_imagenette_variant(str(tmp_path), "", 224)[0] == "imagenette2-320"
    variant, why = choose_imagenette_variant(str(tmp_path), "", 400)
    assert variant == "imagenette2-320" and "exceeds" in why
    assert choose_imagenette_variant(str(tmp_path), "imagenette2-160", 224)[0] == "imagenette2-160"
    assert choose_imagenette_variant(str(tmp_path), "imagenette2", 0)[0] is None
    with pytest.raises(ConfigError, match="imagenette2-320"):
        choose_imagenette_variant(str(tmp_path), "imagenette3", 0)
    splits = build_datasets(folder_cfg(tmp_path, IMAGE_SIZE=200), two_views=False)
    assert splits.info["variant"] == "imagenette2-320" and splits.input_size == (200, 200)


def test_missing_imagenette_names_all_three_paths(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        build_datasets(folder_cfg(tmp_path), two_views=False)
    for name in ("imagenette2", "imagenette2-320", "imagenette2-160"):
        assert str(tmp_path / name) in str(err.value)
    assert "DATASET.DOWNLOAD True" in str(err.value)


def test_empty_class_folder_names_the_folder(tmp_path):
    base = write_imagefolder_dataset(tmp_path, "imagenette2-160", n_train=1, n_val=1)
    empty = base / "val" / IMAGENETTE_WNIDS[3]
    shutil.rmtree(empty)
    empty.mkdir()
    with pytest.raises(DatasetFormatError, match="empty class folder") as err:
        build_datasets(folder_cfg(tmp_path), two_views=False)
    assert str(empty) in str(err.value)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_jpeg_names_the_file(tmp_path, damage):
    base = write_imagefolder_dataset(tmp_path, "imagenette2-160", n_train=1, n_val=1)
    bad = base / "train" / IMAGENETTE_WNIDS[0] / f"{IMAGENETTE_WNIDS[0]}_0.JPEG"
    if damage == "garbage":
        bad.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)  # JPEG magic, garbage body
    else:
        bad.write_bytes(bad.read_bytes()[:300])
    splits = build_datasets(folder_cfg(tmp_path), two_views=False)
    with pytest.raises(DatasetFormatError) as err:
        splits.train[0]
    assert str(bad) in str(err.value)


def test_decode_image_falls_back_to_pil_for_png_named_jpeg(tmp_path):
    from PIL import Image

    path = tmp_path / "really_a_png.JPEG"
    Image.new("RGB", (5, 4), (10, 20, 30)).save(path, format="PNG")
    image = decode_image(str(path))
    assert image.shape == (3, 4, 5) and image[:, 0, 0].tolist() == [10, 20, 30]
    gray = tmp_path / "gray.jpg"
    Image.new("L", (6, 3), 100).save(gray, format="JPEG")
    assert decode_image(str(gray)).shape == (3, 3, 6)  # grayscale JPEG -> RGB on the fast path


def test_imagenet_layout_default_size_and_names(tmp_path):
    wnids = ["n01440764", "n01443537", "n01484850"]
    write_imagefolder_dataset(tmp_path, "imagenet", wnids=wnids, n_train=2, n_val=1)
    splits = build_datasets(folder_cfg(tmp_path, "imagenet"), two_views=False)
    assert splits.num_classes == 3 and splits.class_names == wnids and splits.input_size == (224, 224)
    image, target, _ = splits.val[2]
    assert image.shape == (3, 224, 224) and target == 2
    assert splits.train[0][0].shape == (3, 224, 224)


def test_imagenet_missing_and_flat_val(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        build_datasets(folder_cfg(tmp_path, "imagenet"), two_views=False)
    assert str(tmp_path / "train") in str(err.value) and "valprep.sh" in str(err.value)
    write_imagefolder_dataset(tmp_path, "imagenet", wnids=["n01440764"], n_train=1, n_val=0)
    shutil.rmtree(tmp_path / "val")
    (tmp_path / "val").mkdir()
    write_jpeg(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(DatasetFormatError, match="valprep.sh"):
        build_datasets(folder_cfg(tmp_path, "imagenet", IMAGE_SIZE=32), two_views=False)


def test_val_class_unknown_to_train_is_rejected(tmp_path):
    write_imagefolder_dataset(tmp_path, "imagenet", wnids=["n01440764", "n01443537"], n_train=1, n_val=1)
    shutil.move(tmp_path / "train" / "n01443537", tmp_path / "n01443537_moved")
    with pytest.raises(DatasetFormatError, match="n01443537"):
        build_datasets(folder_cfg(tmp_path, "imagenet", IMAGE_SIZE=32), two_views=False)


def test_download_flag_fetches_the_variant_for_the_image_size(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    class FakeImagenette:  # stands in for the network
        def __init__(self, root, split="train", size="full", download=False):
            calls.append((size, download))
            layout = {"full": "imagenette2", "320px": "imagenette2-320", "160px": "imagenette2-160"}[size]
            write_imagefolder_dataset(root, layout, wnids=IMAGENETTE_WNIDS[:2], n_train=1, n_val=1)

    monkeypatch.setattr(torchvision.datasets, "Imagenette", FakeImagenette)
    splits = build_datasets(folder_cfg(tmp_path, IMAGE_SIZE=224, DOWNLOAD=True), two_views=False)
    assert calls == [("320px", True)] and splits.info["variant"] == "imagenette2-320"
