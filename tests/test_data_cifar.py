"""CIFAR-10/100 reader, restricted unpickler, transforms and loaders on tiny files in the real format."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from fixtures_data import CIFAR10_NAMES, write_cifar, write_malicious_pickle

from kdlab.config import get_cfg
from kdlab.data import build_dataloaders, build_datasets
from kdlab.data.batch_augment import BatchCropFlipNormalize, BatchNormalize
from kdlab.data.safe_pickle import load_pickle
from kdlab.data.transforms import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from kdlab.errors import DatasetFormatError, DatasetNotFoundError


def cifar_cfg(root, kind="cifar100", gpu_augment=False, **dataset):
    cfg = get_cfg()
    cfg.DATASET.TYPE = kind
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NUM_WORKERS = 0
    cfg.DATASET.GPU_AUGMENT = gpu_augment
    for key, value in dataset.items():
        cfg.DATASET[key] = value
    return cfg


def normalized(x_uint8, mean, std) -> torch.Tensor:
    x = torch.as_tensor(x_uint8).float().div(255)
    return (x - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar100_reads_images_labels_and_names(tmp_path, protocol):
    written = write_cifar(tmp_path, "cifar100", n_train=30, n_test=12, protocol=protocol)
    splits = build_datasets(cifar_cfg(tmp_path), two_views=False)
    assert (splits.num_classes, len(splits.train), len(splits.val)) == (100, 30, 12)
    assert splits.class_names == written["class_names"]
    assert torch.equal(splits.train.images, torch.from_numpy(written["x_train"]))
    assert splits.train.images.dtype == torch.uint8 and splits.train.images.shape == (30, 3, 32, 32)
    assert splits.train.targets.tolist() == written["y_train"]
    image, target, index = splits.val[5]
    assert (target, index) == (written["y_test"][5], 5)
    # Test transform: ToTensor + mdistiller's CIFAR-100 Normalize, exactly.
    torch.testing.assert_close(image, normalized(written["x_test"][5], CIFAR100_MEAN, CIFAR100_STD))


def test_cifar10_concatenates_five_batches_in_order(tmp_path):
    written = write_cifar(tmp_path, "cifar10", n_train=23, n_test=7)
    splits = build_datasets(cifar_cfg(tmp_path, "cifar10"), two_views=False)
    assert splits.class_names == CIFAR10_NAMES and splits.num_classes == 10
    assert torch.equal(splits.train.images, torch.from_numpy(written["x_train"]))
    assert splits.train.targets.tolist() == written["y_train"]
    # CIFAR-10 normalization statistics: the mean of the normalized test set per channel.
    out = torch.stack([splits.val[i][0] for i in range(7)])
    expect = (written["x_test"].astype(np.float64).mean(axis=(0, 2, 3)) / 255 - CIFAR10_MEAN) / CIFAR10_STD
    np.testing.assert_allclose(out.mean(dim=(0, 2, 3)).numpy(), expect, rtol=1e-5)


def test_train_items_are_augmented_per_sample(tmp_path):
    write_cifar(tmp_path, "cifar100", n_train=4, n_test=2)
    splits = build_datasets(cifar_cfg(tmp_path), two_views=False)
    assert splits.train_batch_transform is None and splits.val_batch_transform is None
    torch.manual_seed(0)
    views = torch.stack([splits.train[0][0] for _ in range(20)])
    assert views.shape == (20, 3, 32, 32) and views.dtype == torch.float32
    assert len({v.numpy().tobytes() for v in views}) > 5  # random crops/flips differ


def test_gpu_augment_gives_raw_items_and_batch_transforms(tmp_path):
    written = write_cifar(tmp_path, "cifar100", n_train=8, n_test=4)
    splits = build_datasets(cifar_cfg(tmp_path, gpu_augment=True), two_views=False)
    image, _, _ = splits.train[3]
    assert image.dtype == torch.uint8 and torch.equal(image, torch.from_numpy(written["x_train"][3]))
    assert isinstance(splits.train_batch_transform, BatchCropFlipNormalize)
    assert isinstance(splits.val_batch_transform, BatchNormalize)
    val_batch = torch.stack([splits.val[i][0] for i in range(4)])
    torch.testing.assert_close(
        splits.val_batch_transform(val_batch), normalized(written["x_test"], CIFAR100_MEAN, CIFAR100_STD)
    )
    no_aug = build_datasets(cifar_cfg(tmp_path, gpu_augment=True, AUGMENT=False), two_views=False)
    assert type(no_aug.train_batch_transform) is BatchNormalize


def test_two_views_are_weak_strong_tuples(tmp_path):
    write_cifar(tmp_path, "cifar100", n_train=4, n_test=2)
    for gpu in (False, True):  # two views always use the per-sample path
        splits = build_datasets(cifar_cfg(tmp_path, gpu_augment=gpu), two_views=True)
        (weak, strong), target, index = splits.train[1]
        assert weak.shape == strong.shape == (3, 32, 32) and weak.dtype == strong.dtype == torch.float32
        assert splits.train_batch_transform is None and splits.val_batch_transform is None
        assert splits.val[0][0].shape == (3, 32, 32)


def test_build_dataloaders_without_workers(tmp_path):
    write_cifar(tmp_path, "cifar10", n_train=10, n_test=6)
    cfg = cifar_cfg(tmp_path, "cifar10", gpu_augment=True)
    cfg.SOLVER.BATCH_SIZE = 4
    cfg.DATASET.TEST.BATCH_SIZE = 3
    train, val, num_classes = build_dataloaders(cfg, two_views=False)
    image, target, index = next(iter(train))
    assert num_classes == 10 and image.shape == (4, 3, 32, 32) and image.dtype == torch.uint8
    out = train.splits.train_batch_transform(image, torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.float32
    assert sum(len(b[1]) for b in val) == 6


def test_missing_dataset_names_path_and_download(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        build_datasets(cifar_cfg(tmp_path, "cifar100"), two_views=False)
    msg = str(err.value)
    assert str(tmp_path / "cifar-100-python" / "train") in msg and "DATASET.DOWNLOAD True" in msg
    write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match="data_batch_3"):
        build_datasets(cifar_cfg(tmp_path, "cifar10"), two_views=False)


def test_restricted_unpickler_refuses_code(tmp_path):
    # The payload is real: plain pickle would create the file ...
    probe, probe_marker = tmp_path / "probe.pkl", tmp_path / "probe_created"
    write_malicious_pickle(probe, probe_marker)
    with open(probe, "rb") as f:
        pickle.load(f)[b"data"].close()
    assert probe_marker.exists()
    # ... kdlab's reader refuses it, names the file and the global, and creates nothing.
    write_cifar(tmp_path, "cifar100")
    batch, marker = tmp_path / "cifar-100-python" / "train", tmp_path / "pwned"
    write_malicious_pickle(batch, marker)
    with pytest.raises(DatasetFormatError) as err:
        build_datasets(cifar_cfg(tmp_path), two_views=False)
    assert str(batch) in str(err.value) and "io.open" in str(err.value)
    assert not marker.exists()


def test_restricted_unpickler_allows_only_latin1_codecs(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x06\x00\x00\x00rot_13\x86R.")
    with pytest.raises(DatasetFormatError, match="evil.pkl"):
        load_pickle(path)


@pytest.mark.parametrize(
    "data, labels, message",
    [
        (np.zeros((3, 100), np.uint8), [0, 1, 2], "3072 uint8"),
        (np.zeros((3, 3072), np.float32), [0, 1, 2], "3072 uint8"),
        (np.zeros((3, 3072), np.uint8), [0, 1], "3 images but 2 labels"),
        (np.zeros((2, 3072), np.uint8), [0, 100], r"\[0, 99\]"),
    ],
)
def test_malformed_batch_is_rejected(tmp_path, data, labels, message):
    write_cifar(tmp_path, "cifar100")
    path = tmp_path / "cifar-100-python" / "test"
    with open(path, "wb") as f:
        pickle.dump({b"data": data, b"fine_labels": labels}, f, protocol=2)
    with pytest.raises(DatasetFormatError, match=message) as err:
        build_datasets(cifar_cfg(tmp_path), two_views=False)
    assert str(path) in str(err.value)


def test_truncated_file_is_a_format_error(tmp_path):
    write_cifar(tmp_path, "cifar10")
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(DatasetFormatError, match="test_batch"):
        build_datasets(cifar_cfg(tmp_path, "cifar10"), two_views=False)


def test_strong_view_ops_and_seeded_determinism(tmp_path):
    from PIL import Image

    from kdlab.data.sampling import SeededDataset
    from kdlab.data.transforms import RANDAUGMENT_OPS, RandAugmentCutout, cutout

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    for name, op, low, high in RANDAUGMENT_OPS:
        for v in (low, high):
            out = op(img, v)
            assert out.size == (32, 32) and out.mode == "RGB", name
    painted = np.asarray(cutout(img, 0.5))
    assert (painted == (125, 123, 114)).all(axis=-1).sum() >= 8 * 8  # a gray square of side ~16
    assert repr(RandAugmentCutout(2, 10)) == "RandAugmentCutout(n=2, m=10, cutout_max=0.5)"
    # Augmentation draws only from torch / python `random`, so SeededDataset reproduces both views.
    write_cifar(tmp_path, "cifar100", n_train=4, n_test=2)
    train = build_datasets(cifar_cfg(tmp_path), two_views=True).train
    a, b = SeededDataset(train, seed=7)[2][0], SeededDataset(train, seed=7)[2][0]
    c = SeededDataset(train, seed=8)[2][0]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not (torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]))


def test_download_flag_fetches_with_torchvision_then_reads(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    class FakeCIFAR10:  # stands in for the network: writes the files torchvision would extract
        def __init__(self, root, train=True, download=False):
            calls.append((root, download))
            write_cifar(root, "cifar10", n_train=5, n_test=5)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    splits = build_datasets(cifar_cfg(tmp_path, "cifar10", DOWNLOAD=True), two_views=False)
    assert calls == [(str(tmp_path), True)] and len(splits.train) == 5
    build_datasets(cifar_cfg(tmp_path, "cifar10", DOWNLOAD=True), two_views=False)
    assert len(calls) == 1  # files present: nothing fetched again
