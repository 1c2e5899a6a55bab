"""Each on-disk dataset end to end: a tiny copy in the real layout, one epoch from a shipped vanilla config,
then the checkpoint evaluated the way tools/eval.py does (kdlab.engine.builder.evaluate_checkpoint).

A pipeline test: it checks that reading, training, checkpointing and evaluation agree with each other
(same accuracy and loss from the run and from the saved weights), not that the model learns (random
images)."""

from __future__ import annotations

import json
import math
import os

import pytest
from conftest import REPO
from fixtures_data import write_cifar, write_imagefolder_dataset

from kdlab.config import load_cfg
from kdlab.engine.builder import evaluate_checkpoint
from kdlab.engine.run import train


def _write(kind: str, root) -> tuple[int, int]:
    """Write a tiny `kind` dataset under root; return (number of classes, number of test images)."""
    if kind in ("cifar10", "cifar100"):
        write_cifar(root, kind, n_train=16, n_test=8)
        return (10 if kind == "cifar10" else 100), 8
    if kind == "imagenette":
        write_imagefolder_dataset(root, "imagenette2-160", n_train=2, n_val=1)
        return 10, 10
    write_imagefolder_dataset(root, "imagenet", wnids=["n01440764", "n01443537", "n01484850"], n_train=4, n_val=2)
    return 3, 6


# (dataset, config, extra overrides): the smallest models -- resnet8 at 32 px, torchvision's resnet18 at 32 px
CASES = [
    ("cifar10", "configs/cifar10/vanilla/resnet8x4.yaml", ["DISTILLER.STUDENT", "resnet8"]),
    ("cifar100", "configs/cifar100/vanilla/resnet8x4.yaml", ["DISTILLER.STUDENT", "resnet8"]),
    ("imagenette", "configs/imagenette/vanilla/resnet18.yaml", ["DATASET.IMAGE_SIZE", "32"]),
    ("imagenet", "configs/imagenet/vanilla/resnet18.yaml", ["DATASET.IMAGE_SIZE", "32"]),
]


@pytest.mark.parametrize("kind, config, extra", CASES, ids=[c[0] for c in CASES])
def test_one_epoch_then_evaluate(kind, config, extra, tmp_path):
    num_classes, n_test = _write(kind, tmp_path / "data")
    opts = ["DATASET.ROOT", str(tmp_path / "data"), "LOG.PREFIX", str(tmp_path / "logs"), "SOLVER.EPOCHS", "1",
            "SOLVER.BATCH_SIZE", "8", "DATASET.TEST.BATCH_SIZE", "8", "DATASET.NUM_WORKERS", "0",
            "SOLVER.DEVICE", "cpu", "LOG.PROGRESS", "False", "SOLVER.AMP", "False", "SOLVER.CHANNELS_LAST", "False",
            *extra]
    cfg = load_cfg(os.path.join(REPO, config), opts)
    assert cfg.DATASET.TYPE == kind
    summary = train(cfg)
    assert summary["last_epoch"] == 1 and summary["dataset"] == kind and summary["task"] == "classification"
    record = summary["history"][0]
    assert math.isfinite(record["train_loss"]) and 0.0 <= record["test_acc"] <= 100.0
    assert json.load(open(os.path.join(summary["run_dir"], "metrics.json")))["last_acc"] == record["test_acc"]

    report = evaluate_checkpoint(cfg, os.path.join(summary["run_dir"], "student_best"))
    assert report["num_samples"] == n_test and len(report["per_class_acc"]) == num_classes
    assert report["top1"] == pytest.approx(record["test_acc"], abs=1e-9)  # same weights, same test pipeline
    assert report["loss"] == pytest.approx(record["test_loss"], rel=1e-5)
    assert sum(map(sum, report["confusion_matrix"])) == n_test
