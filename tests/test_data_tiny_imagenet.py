"""Tiny-ImageNet in the official tiny-imagenet-200/ layout: discovery, labels, transforms, errors, download."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from fixtures_data import TINY_IMAGENET_WNIDS, class_color, write_jpeg, write_tiny_imagenet

from kdlab.config import get_cfg, load_cfg
from kdlab.data import build_dataloaders, build_datasets
from kdlab.data.tiny_imagenet import TINY_IMAGENET_MEAN, TINY_IMAGENET_STD, URL, ZIP_MD5
from kdlab.errors import ConfigError, DatasetFormatError, DatasetNotFoundError


def tiny_cfg(root, **dataset):
    cfg = get_cfg()
    cfg.DATASET.TYPE = "tiny_imagenet"
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NUM_WORKERS = 0
    for key, value in dataset.items():
        cfg.DATASET[key] = value
    return cfg


def mean_color(image: torch.Tensor) -> np.ndarray:
    """Mean RGB (0..255) of an image normalized with Tiny-ImageNet's statistics."""
    x = image * torch.tensor(TINY_IMAGENET_STD).view(3, 1, 1) + torch.tensor(TINY_IMAGENET_MEAN).view(3, 1, 1)
    return (x.mean(dim=(1, 2)) * 255).numpy()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return root, write_tiny_imagenet(root, n_train=3, n_val=2)


def test_reads_the_official_layout_with_sorted_classes_and_names(tiny):
    root, written = tiny
    splits = build_datasets(tiny_cfg(root))
    assert (splits.num_classes, len(splits.train), len(splits.val)) == (3, 9, 6)
    assert splits.input_size == (64, 64) and splits.info["path"] == str(written["folder"])
    assert written["wnids"] == sorted(TINY_IMAGENET_WNIDS) != TINY_IMAGENET_WNIDS  # wnids.txt is not sorted
    assert splits.class_names == [f"class {w}" for w in written["wnids"]]  # words.txt's first name
    # class k = k-th wnid in sorted order (mdistiller's ImageFolder order), from the folder each image is in
    for path, target in splits.train.samples:
        assert f"/train/{written['wnids'][target]}/images/" in path


def test_val_labels_come_from_val_annotations(tiny):
    root, written = tiny
    splits = build_datasets(tiny_cfg(root))
    assert [(p.rsplit("/", 1)[1], t) for p, t in splits.val.samples] == written["val"]
    assert len(set(splits.val.targets)) == 3 and splits.val.targets != sorted(splits.val.targets)
    for index in range(len(splits.val)):
        image, target, item_index = splits.val[index]
        assert item_index == index and image.shape == (3, 64, 64) and image.dtype == torch.float32
        assert np.abs(mean_color(image) - class_color(target)).max() < 6  # the pixels of that class


def test_train_items_are_augmented_as_mdistiller(tiny):
    root, _ = tiny
    train = build_datasets(tiny_cfg(root)).train
    assert [type(t).__name__ for t in train.transform.transforms] == [
        "RandomRotation", "RandomHorizontalFlip", "ToFloat", "Normalize"]
    assert train.transform.transforms[0].degrees == [-20.0, 20.0]
    plain = build_datasets(tiny_cfg(root, AUGMENT=False))
    image, target, index = plain.train[4]
    assert index == 4 and np.abs(mean_color(image) - class_color(target)).max() < 6


def test_loaders_and_two_views(tiny):
    root, _ = tiny
    cfg = tiny_cfg(root)
    cfg.SOLVER.BATCH_SIZE = 4
    train_loader, val_loader, num_classes = build_dataloaders(cfg, two_views=True)
    (weak, strong), target, index = next(iter(train_loader))
    assert num_classes == 3 and weak.shape == strong.shape == (4, 3, 64, 64) and not torch.equal(weak, strong)
    images, targets, _ = next(iter(val_loader))
    assert images.shape[1:] == (3, 64, 64) and targets.dtype == torch.int64


def test_root_may_be_the_dataset_folder_itself(tiny):
    root, written = tiny
    assert len(build_datasets(tiny_cfg(written["folder"])).val) == 6


def test_val_sorted_into_class_folders_is_read_without_annotations(tmp_path):
    written = write_tiny_imagenet(tmp_path, n_train=1, n_val=1)
    val = written["folder"] / "val"
    for name, target in written["val"]:
        (val / written["wnids"][target]).mkdir(exist_ok=True)
        shutil.move(str(val / "images" / name), str(val / written["wnids"][target] / name))
    (val / "val_annotations.txt").unlink()
    splits = build_datasets(tiny_cfg(tmp_path))
    assert sorted(splits.val.targets) == [0, 1, 2]
    assert all(f"/val/{written['wnids'][t]}/" in p for p, t in splits.val.samples)


def test_missing_dataset_says_where_and_how(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        build_datasets(tiny_cfg(tmp_path))
    message = str(err.value)
    assert f"{tmp_path}/tiny-imagenet-200/wnids.txt" in message and "val_annotations.txt" in message
    assert "DATASET.DOWNLOAD True" in message and "DATASET.ROOT" in message and "\n" not in message


@pytest.mark.parametrize("damage, error, pattern", [
    ("no_annotations", DatasetNotFoundError, r"missing .*val_annotations\.txt.*DATASET\.DOWNLOAD"),
    ("unknown_wnid", DatasetFormatError, r"val_annotations\.txt:2: expected .* wnid of wnids\.txt"),
    ("missing_val_image", DatasetFormatError, r"val_annotations\.txt:1: .*val_0\.JPEG does not exist"),
    ("class_folder_missing", DatasetFormatError, r"class folders do not match .*wnids\.txt \(1 missing"),
    ("empty_class", DatasetFormatError, r"no images of class n01443537; unpack tiny-imagenet-200\.zip again"),
])
def test_broken_layouts_name_the_file_and_the_fix(tmp_path, damage, error, pattern):
    written = write_tiny_imagenet(tmp_path, n_train=1, n_val=1)
    folder = written["folder"]
    annotations = folder / "val" / "val_annotations.txt"
    if damage == "no_annotations":
        annotations.unlink()
    elif damage == "unknown_wnid":
        lines = annotations.read_text().splitlines()
        lines[1] = lines[1].replace(lines[1].split("\t")[1], "n99999999")
        annotations.write_text("\n".join(lines) + "\n")
    elif damage == "missing_val_image":
        (folder / "val" / "images" / "val_0.JPEG").unlink()
    elif damage == "class_folder_missing":
        shutil.rmtree(folder / "train" / "n09246464")
    else:
        for f in (folder / "train" / "n01443537" / "images").iterdir():
            f.unlink()
    with pytest.raises(error, match=pattern):
        build_datasets(tiny_cfg(tmp_path))


def test_corrupt_or_wrong_size_image_names_the_file(tmp_path):
    written = write_tiny_imagenet(tmp_path, n_train=1, n_val=1)
    splits = build_datasets(tiny_cfg(tmp_path))
    path, _ = splits.val.samples[0]
    with open(path, "r+b") as f:
        f.truncate(40)
    with pytest.raises(DatasetFormatError, match=rf"{path}: "):
        splits.val[0]
    path, _ = splits.val.samples[1]
    write_jpeg(path, (32, 40))
    with pytest.raises(DatasetFormatError, match=rf"{path}: a 32x40 image; Tiny-ImageNet images are 64x64"):
        splits.val[1]
    assert written["folder"].is_dir()


def test_image_size_other_than_64_is_refused_at_load():
    with pytest.raises(ConfigError, match=r"DATASET.IMAGE_SIZE 32: DATASET.TYPE tiny_imagenet always trains at 64x64"):
        load_cfg(None, ["DATASET.TYPE", "tiny_imagenet", "DATASET.IMAGE_SIZE", "32"])


def test_download_flag_fetches_the_official_zip(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    calls = []

    def fake_download(url, root, md5=None, **kwargs):
        calls.append((url, root, md5))
        write_tiny_imagenet(root, n_train=1, n_val=1)

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    splits = build_datasets(tiny_cfg(tmp_path, DOWNLOAD=True))
    assert calls == [(URL, str(tmp_path), ZIP_MD5)] and len(splits.train) == 3
    build_datasets(tiny_cfg(tmp_path, DOWNLOAD=True))  # present now: no second download
    assert len(calls) == 1


def test_teacher_default_file_is_mdistillers_tiny_imagenet_one(tiny, tmp_path, monkeypatch):
    from kdlab.engine.builder import build_teacher
    from kdlab.errors import TeacherCheckpointNotFound
    from kdlab.models import build_model

    root, _ = tiny
    monkeypatch.chdir(tmp_path)
    cfg = load_cfg(None, ["DATASET.TYPE", "tiny_imagenet", "DATASET.ROOT", str(root), "DISTILLER.TYPE", "KD",
                          "DISTILLER.TEACHER", "ResNet18", "DISTILLER.STUDENT", "MobileNetV2"])
    splits = build_datasets(cfg)
    path = tmp_path / "download_ckpts" / "tiny_imagenet_teachers" / "ResNet18_vanilla" / "ti_res18"
    with pytest.raises(TeacherCheckpointNotFound, match="tiny_imagenet_teachers/ResNet18_vanilla/ti_res18"):
        build_teacher(cfg, splits)
    path.parent.mkdir(parents=True)
    weights = build_model("ResNet18", 3).state_dict()
    torch.save({"model": weights}, path)  # mdistiller's teacher file layout
    teacher = build_teacher(cfg, splits)
    assert all(torch.equal(v, weights[k]) for k, v in teacher.state_dict().items())
