"""Benchmark data: synthetic CIFAR files in the real layout, and the train loader / augmentation benchmark."""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from yacs.config import CfgNode

from kdlab.data import build_dataloaders
from kdlab.data.batch_augment import benchmark_augment
from kdlab.data.cifar import LAYOUTS, locate
from kdlab.engine.builder import build_splits, select_device
from kdlab.engine.step_utils import _to_device
from kdlab.errors import DatasetNotFoundError

# Real split sizes, for the estimate of a whole run when the benchmark reads synthetic files.
CIFAR_SIZES = {"cifar10": (50000, 10000), "cifar100": (50000, 10000)}


def sync(device: torch.device) -> None:
    """Wait for the device (CUDA kernels run asynchronously), so that a clock reading means something."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def with_options(cfg: CfgNode, options: dict[str, Any]) -> CfgNode:
    """A frozen copy of cfg with dotted keys set to values."""
    out = cfg.clone()
    out.defrost()
    for key, value in options.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    out.freeze()
    return out


def write_synthetic_cifar(root: str, name: str, n_train: int, n_test: int, seed: int = 0) -> str:
    """Write random uint8 images in CIFAR's python-pickle layout under root; return root."""
    layout = LAYOUTS[name]
    folder = os.path.join(root, layout.folder)
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)

    def dump(obj: dict, fname: str) -> None:
        with open(os.path.join(folder, fname), "wb") as f:
            pickle.dump(obj, f, protocol=2)

    def batch(n: int) -> dict:
        data = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        return {"data": data, layout.label_key: rng.integers(0, layout.num_classes, n).tolist()}

    per_file = math.ceil(n_train / len(layout.train_files))
    for fname in layout.train_files:
        dump(batch(per_file), fname)
    dump(batch(n_test), layout.test_file)
    dump({layout.names_key: [f"class_{i}" for i in range(layout.num_classes)]}, layout.meta_file)
    return root


def _has_real_data(cfg: CfgNode) -> bool:
    if cfg.DATASET.TYPE not in LAYOUTS:
        return True  # other datasets: the builder reads DATASET.ROOT and says what is missing
    try:
        locate(cfg.DATASET.ROOT, LAYOUTS[cfg.DATASET.TYPE])
        return True
    except DatasetNotFoundError:
        return False


@contextlib.contextmanager
def dataset_for_bench(cfg: CfgNode, n_train: int, n_test: int, prefer_real: bool = False) -> Iterator[tuple]:
    """Yield (cfg, source, sizes): cfg reading synthetic CIFAR files (or the real data), and the real split sizes.

    CIFAR configs get synthetic files in the real layout unless prefer_real and the dataset is present;
    digits is bundled; other datasets are read from DATASET.ROOT.
    """
    kind = cfg.DATASET.TYPE
    if kind not in LAYOUTS or (prefer_real and _has_real_data(cfg)):
        yield cfg, "real", None
        return
    with tempfile.TemporaryDirectory(prefix="kdlab-bench-") as root:
        write_synthetic_cifar(root, kind, n_train, n_test, seed=cfg.EXPERIMENT.SEED)
        yield with_options(cfg, {"DATASET.ROOT": root, "DATASET.DOWNLOAD": False}), "synthetic", CIFAR_SIZES[kind]


def bench_data(cfg: CfgNode, batches: int = 50, aug_images: int = 4096, aug_per_sample: int = 2048) -> dict[str, Any]:
    """Images/s of the config's train loader (+ its batch transform on the device) and of CIFAR augmentation.

    Real data when present under DATASET.ROOT; for CIFAR otherwise synthetic files in the real layout.
    """
    device = select_device(cfg)
    bs = cfg.SOLVER.BATCH_SIZE
    with dataset_for_bench(cfg, n_train=(batches + 1) * bs, n_test=bs, prefer_real=True) as (data_cfg, source, _):
        train_loader, _, _ = build_dataloaders(data_cfg, splits=build_splits(data_cfg))
        splits = train_loader.splits
        train_loader.sampler.set_epoch(1)
        transform = splits.train_batch_transform
        g = torch.Generator(device=device).manual_seed(0)
        n_images, start = 0, None
        for i, (image, _target, _index) in enumerate(train_loader):
            image = _to_device(image, device)
            if transform is not None:
                image = transform(image, g)
            if i == 0:  # worker start-up is not throughput
                sync(device)
                start = time.perf_counter()
                continue
            n_images += image[0].shape[0] if isinstance(image, (tuple, list)) else image.shape[0]
            if i >= batches:
                break
        sync(device)
        elapsed = time.perf_counter() - start if start is not None else float("nan")
    aug = benchmark_augment(n_images=aug_images, batch=bs, device=str(device), per_sample_images=aug_per_sample)
    return {
        "dataset": cfg.DATASET.TYPE, "data": source, "device": str(device), "batch_size": bs,
        "num_workers": cfg.DATASET.NUM_WORKERS, "augment": splits.info.get("augment", ""),
        "loader_batches": max(0, min(batches, len(train_loader) - 1)),
        "loader_images_per_s": n_images / elapsed if n_images else None,
        "augment_images_per_s": aug,
        "augment_speedup_vs_pil": aug["batched"] / aug["per_sample_pil"],
        "augment_speedup_vs_tensor": aug["batched"] / aug["per_sample"],
        "threads": torch.get_num_threads(),
    }
