"""CIFAR at a torchvision resolution with ImageNet-pretrained torchvision models, fine-tuned to its classes.

The weights are a fake file in a temporary torch hub cache under torchvision's own file name; KDLAB_OFFLINE=1
makes any attempt to download an error, so nothing here touches the network.
"""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch
import torchvision
from fixtures_data import write_cifar
from torchvision.models import get_model_weights

from kdlab.config import load_cfg
from kdlab.engine.builder import build_everything
from kdlab.engine.run import train
from kdlab.errors import CheckpointError
from kdlab.models.imagenet.torchvision import cached_weights_path


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("KDLAB_OFFLINE", "1")
    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()
    path = cached_weights_path(get_model_weights("resnet18").IMAGENET1K_V1)
    os.makedirs(os.path.dirname(path))
    torch.save(state, path)
    return state


def _cfg(tmp_path, *opts):
    write_cifar(tmp_path / "data", "cifar10", n_train=20, n_test=10)
    return load_cfg(None, ["DATASET.TYPE", "cifar10", "DATASET.ROOT", str(tmp_path / "data"),
                           "DATASET.NUM_WORKERS", "0", "DATASET.IMAGE_SIZE", "64", "SOLVER.DEVICE", "cpu",
                           "SOLVER.BATCH_SIZE", "4", "SOLVER.EPOCHS", "1", "SOLVER.MAX_STEPS_PER_EPOCH", "1",
                           "LOG.PROGRESS", "False", "LOG.PREFIX", str(tmp_path / "logs"), *opts])


def test_pretrained_student_is_fine_tuned_on_resized_cifar(tmp_path, hub):
    cfg = _cfg(tmp_path, "DISTILLER.TYPE", "NONE", "DISTILLER.STUDENT", "resnet18",
               "DISTILLER.STUDENT_PRETRAINED", "IMAGENET1K_V1")
    splits, distiller = build_everything(cfg)
    student = distiller.student
    assert splits.input_size == (64, 64) and splits.info["normalize"] == "imagenet"
    assert torch.equal(student.conv1.weight, hub["conv1.weight"])  # the ImageNet weights ...
    assert student.fc.weight.shape == (10, 512)  # ... with a new 10-class classifier
    summary = train(cfg)
    metrics = json.load(open(os.path.join(summary["run_dir"], "metrics.json")))
    assert metrics["input_size"] == [64, 64] and metrics["last_epoch"] == 1


def test_offline_without_the_file_names_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("KDLAB_OFFLINE", "1")
    cfg = _cfg(tmp_path, "DISTILLER.TYPE", "NONE", "DISTILLER.STUDENT", "resnet18",
               "DISTILLER.STUDENT_PRETRAINED", "IMAGENET1K_V1")
    with pytest.raises(CheckpointError, match=r"KDLAB_OFFLINE is set.*resnet18-f37072fd\.pth"):
        build_everything(cfg)


def test_pretrained_teacher_with_a_new_head_is_warned_about(tmp_path, hub):
    cfg = _cfg(tmp_path, "DISTILLER.TYPE", "KD", "DISTILLER.STUDENT", "resnet18", "DISTILLER.TEACHER", "resnet18",
               "DISTILLER.TEACHER_PRETRAINED", "IMAGENET1K_V1")
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logging.getLogger("kdlab").addHandler(handler)
    try:
        _, distiller = build_everything(cfg)
    finally:
        logging.getLogger("kdlab").removeHandler(handler)
    assert torch.equal(distiller.teacher.conv1.weight, hub["conv1.weight"])
    assert any("teacher's classifier is new and untrained" in r.getMessage() and "DISTILLER.TEACHER_CKPT"
               in r.getMessage() for r in records)
