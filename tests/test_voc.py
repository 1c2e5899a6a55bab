"""PASCAL VOC 2012 segmentation data: layout, palette masks, joint transforms, loaders and errors naming files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_data import class_color, voc_labels, write_voc, write_voc_mask

from kdlab.config import get_cfg
from kdlab.data import build_dataloaders, build_datasets
from kdlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from kdlab.data.voc import VOC_CLASSES, read_mask
from kdlab.errors import ConfigError, DatasetFormatError, DatasetNotFoundError

SIZE = 32  # working resolution in these tests; the fixture images are 48 x 40 (width x height)


def voc_cfg(root, **dataset):
    cfg = get_cfg()
    cfg.DATASET.TYPE = "voc"
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NUM_WORKERS = 0
    cfg.DATASET.IMAGE_SIZE = SIZE
    for key, value in dataset.items():
        cfg.DATASET[key] = value
    return cfg


def unnormalize(image: torch.Tensor) -> torch.Tensor:
    """3 x H x W normalized image -> 0..255 values."""
    return (image * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) * 255


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    return root, write_voc(root, n_train=6, n_val=4)


def test_splits_classes_and_task(voc):
    root, info = voc
    splits = build_datasets(voc_cfg(root), two_views=False)
    assert splits.task == "segmentation"
    assert (splits.num_classes, len(splits.train), len(splits.val)) == (21, 6, 4)
    assert splits.class_names == VOC_CLASSES and len(VOC_CLASSES) == 21
    assert (splits.class_names[0], splits.class_names[1], splits.class_names[-1]) == (
        "background", "aeroplane", "tvmonitor")
    assert splits.input_size == (SIZE, SIZE)
    assert splits.info["path"].endswith("VOCdevkit/VOC2012")


def test_palette_mask_reads_indices_not_colours(voc, tmp_path):
    root, info = voc
    image_id = info["train_ids"][3]
    mask = read_mask(str(info["base"] / "SegmentationClass" / f"{image_id}.png"))
    assert mask.dtype == torch.uint8
    np.testing.assert_array_equal(mask.numpy(), info["labels"][image_id])
    assert set(mask.unique().tolist()) == {0, 4, 255}  # class 4 (boat) is palette colour (128, 0, 128)
    from PIL import Image

    gray = tmp_path / "gray.png"  # SegmentationClassAug-style single-channel masks read the same way
    Image.fromarray(info["labels"][image_id]).save(gray)
    np.testing.assert_array_equal(read_mask(str(gray)).numpy(), info["labels"][image_id])


def test_rgb_mask_and_out_of_range_labels_are_refused(tmp_path):
    from PIL import Image

    rgb = tmp_path / "rgb.png"
    Image.new("RGB", (8, 6), (128, 0, 0)).save(rgb)
    with pytest.raises(DatasetFormatError, match=r"rgb\.png.*mode 'RGB'.*palette"):
        read_mask(str(rgb))
    bad = tmp_path / "bad.png"
    write_voc_mask(bad, np.full((6, 8), 30, dtype=np.uint8))
    with pytest.raises(DatasetFormatError, match=r"bad\.png.*label 30.*0\.\.20 or 255"):
        read_mask(str(bad))


def test_val_item_is_resized_padded_and_deterministic(voc):
    root, info = voc
    splits = build_datasets(voc_cfg(root), two_views=False)
    image, mask, index = splits.val[1]
    assert index == 1 and image.dtype == torch.float32 and mask.dtype == torch.int64
    assert image.shape == (3, SIZE, SIZE) and mask.shape == (SIZE, SIZE)
    # 48 x 40 -> long side 32: 32 x 27, padded at the bottom with 0 (image) / 255 (mask)
    assert (mask[27:] == 255).all() and (mask[:27] != 255).any()
    labels = info["labels"][info["val_ids"][1]]
    cls = int(labels.max(initial=0, where=labels != 255))
    assert set(mask.unique().tolist()) == {0, cls, 255}
    ys, xs = np.nonzero(labels == cls)
    cy, cx = int(ys.mean() * 27 / 40), int(xs.mean() * SIZE / 48)
    assert mask[cy, cx] == cls
    assert torch.allclose(unnormalize(image)[:, cy, cx], torch.tensor(class_color(cls), dtype=torch.float32), atol=12)
    again = splits.val[1]
    assert torch.equal(again[0], image) and torch.equal(again[1], mask)


def test_train_transform_keeps_image_and_mask_aligned(voc):
    root, info = voc
    splits = build_datasets(voc_cfg(root), two_views=False)
    torch.manual_seed(0)
    seen_flip_or_scale = set()
    for i in range(len(splits.train)):
        image, mask, _ = splits.train[i]
        assert image.shape == (3, SIZE, SIZE) and mask.shape == (SIZE, SIZE)
        cls = 1 + i % 20
        assert set(mask.unique().tolist()) <= {0, cls, 255}
        pixels = unnormalize(image)
        obj = mask == cls
        if obj.sum() > 4:  # object pixels carry the object's colour, background ones grey
            assert torch.allclose(pixels[:, obj].mean(1), torch.tensor(class_color(cls), dtype=torch.float32), atol=25)
        bg = mask == 0
        if bg.sum() > 4:
            assert torch.allclose(pixels[:, bg].mean(1), torch.full((3,), 128.0), atol=25)
        seen_flip_or_scale.add(int((mask == 255).sum()))
    assert len(seen_flip_or_scale) > 1  # random scale/crop differ between items


def test_loader_batches_images_and_long_masks(voc):
    root, _ = voc
    cfg = voc_cfg(root)
    cfg.SOLVER.BATCH_SIZE = 4
    cfg.DATASET.TEST.BATCH_SIZE = 4
    train_loader, val_loader, num_classes = build_dataloaders(cfg)
    image, mask, index = next(iter(train_loader))
    assert num_classes == 21 and image.shape == (4, 3, SIZE, SIZE) and mask.shape == (4, SIZE, SIZE)
    assert mask.dtype == torch.int64 and len(set(index.tolist())) == 4
    assert sum(b[0].shape[0] for b in val_loader) == 4


def test_default_image_size_is_320(voc):
    root, _ = voc
    splits = build_datasets(voc_cfg(root, IMAGE_SIZE=0), two_views=False)
    assert splits.input_size == (320, 320) and splits.val[0][0].shape == (3, 320, 320)


def test_missing_layout_names_expected_paths(tmp_path):
    with pytest.raises(DatasetNotFoundError) as exc:
        build_datasets(voc_cfg(tmp_path), two_views=False)
    message = str(exc.value)
    assert str(tmp_path / "VOCdevkit/VOC2012/JPEGImages") in message
    assert "ImageSets/Segmentation/train.txt" in message and "DATASET.DOWNLOAD" in message


def test_mask_size_mismatch_names_the_mask(tmp_path):
    info = write_voc(tmp_path, n_train=2, n_val=2)
    bad_id = info["val_ids"][0]
    write_voc_mask(info["base"] / "SegmentationClass" / f"{bad_id}.png", voc_labels(0, (30, 20)))
    splits = build_datasets(voc_cfg(tmp_path), two_views=False)
    with pytest.raises(DatasetFormatError, match=rf"{bad_id}\.png: mask is 30x20.*{bad_id}\.jpg is 48x40"):
        splits.val[0]


def test_corrupt_jpeg_names_the_file(tmp_path):
    info = write_voc(tmp_path, n_train=2, n_val=2)
    bad_id = info["train_ids"][1]
    (info["base"] / "JPEGImages" / f"{bad_id}.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"not a jpeg" * 10)
    splits = build_datasets(voc_cfg(tmp_path), two_views=False)
    splits.train[0]
    with pytest.raises(DatasetFormatError, match=rf"{bad_id}\.jpg"):
        splits.train[1]


def test_split_id_without_image_names_split_file_and_path(tmp_path):
    info = write_voc(tmp_path, n_train=2, n_val=2)
    with open(info["base"] / "ImageSets/Segmentation/val.txt", "a") as f:
        f.write("2012_999999\n")
    with pytest.raises(DatasetFormatError, match=r"val\.txt: id '2012_999999' has no image file .*2012_999999\.jpg"):
        build_datasets(voc_cfg(tmp_path), two_views=False)


def test_two_view_methods_are_refused(voc):
    root, _ = voc
    with pytest.raises(ConfigError, match="classification-only"):
        build_datasets(voc_cfg(root), two_views=True)
