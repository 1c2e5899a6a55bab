"""Seed recipes: each config resolves to the seed's values and trains one epoch on tiny data from the CLI.

teacher-student-model-from-scratch (configs/cifar10/teacher_student_from_scratch/): torchvision ResNet-50 ->
ResNet-18, both ImageNet-pretrained, CIFAR-10 at 224 px with ImageNet statistics, SGD 0.001 / 0.9, batch 100,
5 / 5 / 10 epochs, alpha 0.25 * CE + 0.75 * KL(T 5) without T^2.

The smoke runs shrink the images (DATASET.IMAGE_SIZE) and switch the ImageNet weights off (there is no
network here); everything else is the shipped config.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import REPO
from fixtures_data import write_cifar
from test_cli import call_tool
from torchvision.models import get_model_weights

from kdlab.config import load_cfg
from kdlab.distillers.losses import kd_loss
from kdlab.models.build import build_model

TSFS = os.path.join(REPO, "configs", "cifar10", "teacher_student_from_scratch")
TSFS_TRAIN = [{"Resize": {"size": [224, 224]}}, {"RandomHorizontalFlip": {"p": 0.5}}]  # utils.py l.31-36


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _tiny_opts(tmp_path, *extra: str) -> list[str]:
    return ["DATASET.ROOT", str(tmp_path / "data"), "DATASET.NUM_WORKERS", "0", "DATASET.IMAGE_SIZE", "32",
            "SOLVER.DEVICE", "cpu", "SOLVER.BATCH_SIZE", "4", "SOLVER.EPOCHS", "1", "SOLVER.MAX_STEPS_PER_EPOCH",
            "1", "SOLVER.AMP", "False", "LOG.PROGRESS", "False", "LOG.PREFIX", str(tmp_path / "logs"), *extra]


@pytest.mark.parametrize("name, model, weights, epochs", [
    ("resnet50_teacher.yaml", "resnet50", "IMAGENET1K_V2", 5),  # config.py l.3, custom_resnet.py l.18
    ("resnet18_student.yaml", "resnet18", "IMAGENET1K_V1", 5),  # custom_resnet.py l.31, l.59
    ("kd_resnet50_resnet18.yaml", "resnet18", "IMAGENET1K_V1", 10),  # config.py l.4, l.33
])
def test_teacher_student_from_scratch_values(name, model, weights, epochs):
    cfg = load_cfg(os.path.join(TSFS, name), [])
    s = cfg.SOLVER
    assert (s.TYPE, s.BATCH_SIZE, s.EPOCHS, s.LR, s.MOMENTUM) == ("SGD", 100, epochs, 0.001, 0.9)
    assert (s.WEIGHT_DECAY, s.NESTEROV, s.SCHEDULER, s.WARMUP_EPOCHS) == (0.0, False, "constant", 0)
    d = cfg.DATASET
    assert (d.TYPE, d.IMAGE_SIZE, d.NORMALIZE, d.TRAIN_TRANSFORMS) == ("cifar10", 224, "imagenet", TSFS_TRAIN)
    assert d.TEST_TRANSFORMS == [{"Resize": {"size": [224, 224]}}]
    assert cfg.DISTILLER.STUDENT == model and cfg.DISTILLER.STUDENT_PRETRAINED == weights
    # ResNet50_Weights.DEFAULT / ResNet18_Weights.DEFAULT, the seed's weights='...DEFAULT'
    assert get_model_weights(model).DEFAULT is get_model_weights(model)[weights]
    # the seed's networks: torchvision's with fc = Linear(in_features, 10)
    seed_count = _params(getattr(torchvision.models, model)(num_classes=10))
    assert seed_count == {"resnet50": 23_528_522, "resnet18": 11_181_642}[model]
    assert abs(_params(build_model(model, 10)) - seed_count) <= 0.05 * seed_count


def test_teacher_student_from_scratch_kd_is_the_seed_loss():
    cfg = load_cfg(os.path.join(TSFS, "kd_resnet50_resnet18.yaml"), [])
    assert (cfg.DISTILLER.TYPE, cfg.DISTILLER.TEACHER, cfg.KD.TEMPERATURE) == ("KD", "resnet50", 5.0)
    assert cfg.DISTILLER.TEACHER_CKPT == "logs/teacher_student_from_scratch/resnet50_teacher/student_best"
    assert _params(build_model(cfg.DISTILLER.TEACHER, 10)) == 23_528_522
    torch.manual_seed(0)
    s, t, y = torch.randn(6, 10), torch.randn(6, 10), torch.randint(0, 10, (6,))
    alpha, temp = 0.25, 5.0  # config.py l.7-8
    seed = alpha * F.cross_entropy(s, y) + (1 - alpha) * F.kl_div(  # teacher_student_model.py l.52-58
        F.log_softmax(s / temp, dim=1), F.softmax(t / temp, dim=1), reduction="batchmean")
    ours = cfg.KD.LOSS.CE_WEIGHT * F.cross_entropy(s, y) + cfg.KD.LOSS.KD_WEIGHT * kd_loss(s, t, cfg.KD.TEMPERATURE)
    assert torch.allclose(ours, seed, rtol=1e-5)


def test_teacher_student_from_scratch_trains_and_evaluates_from_the_cli(tmp_path):
    write_cifar(tmp_path / "data", "cifar10", n_train=20, n_test=10)
    off = ("DISTILLER.STUDENT_PRETRAINED", "")
    runs = {}
    for name in ("resnet50_teacher", "resnet18_student"):
        res = call_tool("train.py", "--cfg", os.path.join(TSFS, f"{name}.yaml"), *_tiny_opts(tmp_path, *off))
        assert res.returncode == 0, res.stderr[-2000:]
        runs[name] = tmp_path / "logs" / "teacher_student_from_scratch" / name
        assert json.load(open(runs[name] / "metrics.json"))["last_epoch"] == 1
    teacher = str(runs["resnet50_teacher"] / "student_best")
    kd_cfg = os.path.join(TSFS, "kd_resnet50_resnet18.yaml")
    res = call_tool("train.py", "--cfg", kd_cfg, *_tiny_opts(tmp_path, *off, "DISTILLER.TEACHER_CKPT", teacher))
    assert res.returncode == 0, res.stderr[-2000:]
    kd_run = tmp_path / "logs" / "teacher_student_from_scratch" / "kd_resnet50_resnet18"
    metrics = json.load(open(kd_run / "metrics.json"))
    assert metrics["last_epoch"] == 1 and metrics["input_size"] == [32, 32]
    # the seed's evaluation: per-class accuracy, confusion matrix, classification report
    res = call_tool("eval.py", "--cfg", kd_cfg, "--ckpt", str(kd_run / "student_best"),
                    *_tiny_opts(tmp_path, *off, "DISTILLER.TEACHER_CKPT", teacher))
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout.lower()
    for needle in ("per-class accuracy:", "truck ", "confusion matrix", "classification report:", "f1-score",
                   "macro avg", "weighted avg"):
        assert needle in out, (needle, res.stdout)
