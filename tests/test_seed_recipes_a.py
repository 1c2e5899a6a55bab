"""Seed recipes: each config resolves to the seed's values and trains one epoch on tiny data from the CLI.

ConKD-Lion (configs/imagenette/vanilla/resnet101.yaml, configs/imagenette/conkd/resnet101_resnet18.yaml):
torchvision ResNet-101 (IMAGENET1K_V2) -> ResNet-18 (no weights) on Imagenette at 224 px, LS-KD (T 2) +
0.15 * two-view SupCon, no CE, AdamW 6e-4 cosine to 6e-7, batch 64 / 128, 60 / 300 epochs, 10 % held out.
The seed's own four stages (configs/imagenette/conkd/*_stage*.yaml): teacher SupCon on a 2048-2048-128 head, teacher
linear classifier (AdamW 5e-4, 40 epochs) on the frozen encoder, student LS-KD between the two heads' embeddings +
0.15 * SupCon, student classifier 512-128-BN-ReLU-Dropout(0.4)-10 with Lion 1e-4 / 1e-4, plateau (0.1, 3) and early
stopping (5) on the held-out loss, 50 epochs.

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
from fixtures_data import write_cifar, write_imagefolder_dataset
from test_cli import call_tool
from torchvision.models import get_model_weights

from kdlab.config import load_cfg
from kdlab.distillers import DatasetFacts, build_distiller
from kdlab.distillers.losses import kd_loss, supcon_loss
from kdlab.models.build import build_model
from kdlab.models.heads import configure_classifier

CONKD_CFG = os.path.join(REPO, "configs", "imagenette", "conkd", "resnet101_resnet18.yaml")
CONKD_TEACHER_CFG = os.path.join(REPO, "configs", "imagenette", "vanilla", "resnet101.yaml")
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


# ---------------------------------------------------------------- ConKD-Lion
CONKD_TRAIN = [  # resnet101-18-teacher-student.ipynb cell 4 (after its v2.Resize((224, 224)))
    {"Resize": {"size": [224, 224]}},
    {"RandAugment": {"num_ops": 5, "magnitude": 14}},
    {"RandomCrop": {"size": 224, "padding": 16}},
    {"RandomHorizontalFlip": {"p": 0.5}},
    {"RandomRotation": {"degrees": 10}},
    {"ColorJitter": {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.2}},
]


def _seed_supcon(features, labels, temperature=0.07, base_temperature=0.07):
    """The seed's SupConLoss (cell 6, contrast_mode 'all') on [bsz, n_views, dim] features, as cell 11 calls it."""
    batch, views = features.shape[:2]
    mask = torch.eq(labels.view(-1, 1), labels.view(1, -1)).float()
    contrast = torch.cat(torch.unbind(features, dim=1), dim=0)
    logits = contrast @ contrast.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    mask = mask.repeat(views, views)
    logits_mask = torch.scatter(torch.ones_like(mask), 1, torch.arange(batch * views).view(-1, 1), 0)
    mask = mask * logits_mask
    log_prob = logits - torch.log((torch.exp(logits) * logits_mask).sum(1, keepdim=True))
    pairs = torch.where(mask.sum(1) < 1e-6, 1, mask.sum(1))
    return (-(temperature / base_temperature) * (mask * log_prob).sum(1) / pairs).view(views, batch).mean()


def _seed_ls_kd(teacher, student, temperature=2):
    """The seed's LogitStandardizationLoss (cell 6)."""
    def z(x):
        return (x - x.mean(dim=-1, keepdim=True)) / (1e-7 + x.std(dim=-1, keepdim=True))
    log_p = F.log_softmax(z(student) / temperature, dim=1)
    return F.kl_div(log_p, F.softmax(z(teacher) / temperature, dim=1), reduction="none").sum(1).mean() * temperature**2


def test_conkd_lion_teacher_values():
    cfg = load_cfg(CONKD_TEACHER_CFG, [])
    s, d = cfg.SOLVER, cfg.DATASET
    # resnet101-teacher.ipynb cells 0, 4, 9
    assert (s.TYPE, s.BATCH_SIZE, s.EPOCHS, s.LR, s.WEIGHT_DECAY, list(s.BETAS)) == (
        "AdamW", 64, 60, 0.0006, 0.01, [0.9, 0.999])
    assert (s.SCHEDULER, s.WARMUP_EPOCHS) == ("cosine", 0) and s.MIN_LR == pytest.approx(0.0006 * 0.1**3)
    assert (d.TYPE, d.VARIANT, d.IMAGE_SIZE, d.NORMALIZE, d.VAL_SPLIT) == (
        "imagenette", "imagenette2", 224, "imagenet", 0.1)
    assert d.TRAIN_TRANSFORMS == CONKD_TRAIN[:3] and d.TEST_TRANSFORMS == CONKD_TRAIN[:1]
    assert (cfg.DISTILLER.TYPE, cfg.DISTILLER.STUDENT, cfg.DISTILLER.STUDENT_PRETRAINED) == (
        "NONE", "resnet101", "IMAGENET1K_V2")  # cell 7
    # the seed's teacher: resnet101 encoder (fc = Identity) + nn.Linear(2048, 10) (cell 11)
    encoder = torchvision.models.resnet101()
    encoder.fc = torch.nn.Identity()
    seed_count = _params(encoder) + 2048 * 10 + 10
    assert abs(_params(build_model("resnet101", 10)) - seed_count) <= 0.05 * seed_count


def test_conkd_lion_student_values():
    cfg = load_cfg(CONKD_CFG, [])
    s, d, c = cfg.SOLVER, cfg.DATASET, cfg.CONKD
    # resnet101-18-teacher-student.ipynb cells 0, 4, 10
    assert (s.TYPE, s.BATCH_SIZE, s.EPOCHS, s.LR, s.WEIGHT_DECAY, list(s.BETAS)) == (
        "AdamW", 128, 300, 0.0006, 0.01, [0.9, 0.999])
    assert (s.SCHEDULER, s.WARMUP_EPOCHS) == ("cosine", 0) and s.MIN_LR == pytest.approx(0.0006 * 0.1**3)
    assert (d.TYPE, d.VARIANT, d.IMAGE_SIZE, d.NORMALIZE, d.VAL_SPLIT) == (
        "imagenette", "imagenette2", 224, "imagenet", 0.1)
    assert d.TRAIN_TRANSFORMS == CONKD_TRAIN and d.TEST_TRANSFORMS == CONKD_TRAIN[:1]
    assert (cfg.DISTILLER.TYPE, cfg.DISTILLER.TEACHER, cfg.DISTILLER.STUDENT) == ("CONKD", "resnet101", "resnet18")
    assert cfg.DISTILLER.STUDENT_PRETRAINED == ""  # cell 7: resnet18(), no weights
    assert cfg.DISTILLER.TEACHER_CKPT == "logs/imagenette/resnet101/student_best"
    # cell 11: loss = LS_KD(T 2) + 0.15 * SupCon(0.07), no CE; cell 7: head 512 -> 512 -> 128
    assert (c.CE_WEIGHT, c.KD_WEIGHT, c.SUPCON_WEIGHT, c.TEMPERATURE, c.SUPCON_TEMPERATURE) == (
        0.0, 1.0, 0.15, 2.0, 0.07)
    assert (c.SUPCON_VARIANT, c.PROJ_DIM) == ("two_view", 128)
    # the seed's student: resnet18 encoder (fc = Identity) + its stage-2 classifier 512 -> 128 -> BN -> 10
    encoder = torchvision.models.resnet18()
    encoder.fc = torch.nn.Identity()
    seed_count = _params(encoder) + (512 * 128 + 128) + 2 * 128 + (128 * 10 + 10)
    assert abs(_params(build_model("resnet18", 10)) - seed_count) <= 0.05 * seed_count


def test_conkd_lion_losses_are_the_seeds():
    torch.manual_seed(0)
    emb = F.normalize(torch.randn(12, 128), dim=1)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 3, 0, 4, 4, 5, 1])  # 3 and 5 have no other positive
    seed = _seed_supcon(torch.stack([emb, emb], dim=1), labels)  # cell 11's two identical views
    assert torch.allclose(supcon_loss(emb, labels, 0.07, variant="two_view"), seed, rtol=1e-5)
    assert not torch.allclose(supcon_loss(emb, labels, 0.07, variant="seed"), seed, rtol=1e-3)
    s, t = torch.randn(12, 10), torch.randn(12, 10)
    assert torch.allclose(kd_loss(s, t, 2.0, logit_stand=True), _seed_ls_kd(t, s), rtol=1e-5)


def test_conkd_lion_trains_one_epoch_from_the_cli(tmp_path):
    write_imagefolder_dataset(tmp_path / "data", layout="imagenette2", n_train=10, n_val=1, size=(40, 36))
    res = call_tool("train.py", "--cfg", CONKD_TEACHER_CFG, *_tiny_opts(tmp_path, "DISTILLER.STUDENT_PRETRAINED", ""))
    assert res.returncode == 0, res.stderr[-2000:]
    teacher_run = tmp_path / "logs" / "imagenette" / "resnet101"
    teacher_metrics = json.load(open(teacher_run / "metrics.json"))
    assert teacher_metrics["last_epoch"] == 1 and "best_val_acc" in teacher_metrics
    res = call_tool("train.py", "--cfg", CONKD_CFG, *_tiny_opts(
        tmp_path, "DISTILLER.TEACHER_CKPT", str(teacher_run / "student_best"), "SOLVER.BATCH_SIZE", "8"))
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.load(open(tmp_path / "logs" / "imagenette" / "conkd_resnet101_resnet18" / "metrics.json"))
    assert metrics["last_epoch"] == 1 and metrics["input_size"] == [32, 32] and "best_val_acc" in metrics


# ---------------------------------------------------------------- ConKD-Lion in the seed's stages
CONKD_DIR = os.path.join(REPO, "configs", "imagenette", "conkd")
TEACHER_1, TEACHER_2, STUDENT_1, STUDENT_2 = (os.path.join(CONKD_DIR, f"{name}.yaml") for name in (
    "resnet101_teacher_stage1_supcon", "resnet101_teacher_stage2_classifier",
    "resnet101_resnet18_stage1_embeddings", "resnet18_stage2_classifier"))
SEED_TEACHER_HEAD = 2048 * 2048 + 2048 + 2048 * 128 + 128  # teacher notebook cell 7: 2048 -> 2048 -> 128
SEED_STUDENT_HEAD = 512 * 512 + 512 + 512 * 128 + 128  # student notebook cell 7: 512 -> 512 -> 128
SEED_CLASSIFIER = (512 * 128 + 128) + 2 * 128 + (128 * 10 + 10)  # student notebook cell 7: class Classifier


def _student_best(cfg) -> str:
    return f"logs/{cfg.EXPERIMENT.PROJECT}/{cfg.EXPERIMENT.NAME}/student_best"


def _encoder_params(name: str) -> int:
    encoder = getattr(torchvision.models, name)()
    encoder.fc = torch.nn.Identity()
    return _params(encoder)


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_conkd_lion_teacher_stages_are_the_seeds():
    t1, t2 = load_cfg(TEACHER_1, []), load_cfg(TEACHER_2, [])
    for cfg in (t1, t2):  # resnet101-teacher.ipynb cells 0, 4
        d = cfg.DATASET
        assert (d.TYPE, d.VARIANT, d.IMAGE_SIZE, d.NORMALIZE, d.VAL_SPLIT, d.TEST.BATCH_SIZE) == (
            "imagenette", "imagenette2", 224, "imagenet", 0.1, 64)
        assert d.TRAIN_TRANSFORMS == CONKD_TRAIN[:3] and d.TEST_TRANSFORMS == CONKD_TRAIN[:1]
        assert (cfg.SOLVER.SELECT_METRIC, cfg.SOLVER.EARLY_STOP_PATIENCE) == ("test_loss", 0)  # cells 10, 13
    s = t1.SOLVER  # cell 9: AdamW 6e-4, the seed's cosine over 60 epochs, batch 64
    assert (s.TYPE, s.BATCH_SIZE, s.EPOCHS, s.LR, s.WEIGHT_DECAY, list(s.BETAS)) == (
        "AdamW", 64, 60, 0.0006, 0.01, [0.9, 0.999])
    assert (s.SCHEDULER, s.WARMUP_EPOCHS) == ("cosine", 0) and s.MIN_LR == pytest.approx(0.0006 * 0.1**3)
    assert (t1.DISTILLER.TYPE, t1.DISTILLER.STUDENT, t1.DISTILLER.STUDENT_PRETRAINED) == (
        "SUPCON", "resnet101", "IMAGENET1K_V2")
    assert (t1.CONKD.PROJ_DIM, t1.CONKD.SUPCON_TEMPERATURE, t1.CONKD.SUPCON_VARIANT) == (128, 0.07, "two_view")
    s = t2.SOLVER  # cells 12-13: AdamW(classifier, lr 5e-4), 40 epochs, no scheduler
    assert (s.TYPE, s.BATCH_SIZE, s.EPOCHS, s.LR, s.WEIGHT_DECAY, list(s.BETAS), s.SCHEDULER) == (
        "AdamW", 64, 40, 0.0005, 0.01, [0.9, 0.999], "constant")
    assert (t2.DISTILLER.TYPE, t2.DISTILLER.STUDENT, t2.DISTILLER.STUDENT_PRETRAINED) == (
        "NONE", "resnet101", _student_best(t1))
    c = t2.CLASSIFIER  # cell 11: nn.Linear(2048, 10) on the frozen encoder in eval mode
    assert (list(c.HIDDEN), c.BATCHNORM, c.DROPOUT, c.FREEZE_BACKBONE) == ([], False, 0.0, True)
    distiller = build_distiller(t1, build_model("resnet101", 10), None, facts=DatasetFacts(input_size=(32, 32)))
    assert distiller.extra_parameter_count() == SEED_TEACHER_HEAD
    model = configure_classifier(distiller.student, c, 10)
    assert _trainable(model) == 2048 * 10 + 10 and _params(model) == _encoder_params("resnet101") + 2048 * 10 + 10


def test_conkd_lion_student_stages_are_the_seeds(tmp_path):
    s1, s2 = load_cfg(STUDENT_1, []), load_cfg(STUDENT_2, [])
    for cfg in (s1, s2):  # resnet101-18-teacher-student.ipynb cells 0, 4
        d = cfg.DATASET
        assert (d.TYPE, d.VARIANT, d.IMAGE_SIZE, d.NORMALIZE, d.VAL_SPLIT, d.TEST.BATCH_SIZE) == (
            "imagenette", "imagenette2", 224, "imagenet", 0.1, 128)
        assert d.TRAIN_TRANSFORMS == CONKD_TRAIN and d.TEST_TRANSFORMS == CONKD_TRAIN[:1]
        assert (cfg.SOLVER.BATCH_SIZE, cfg.SOLVER.SELECT_METRIC) == (128, "test_loss")  # cells 11, 16
    s = s1.SOLVER  # cell 10: AdamW 6e-4, the seed's cosine over 300 epochs
    assert (s.TYPE, s.EPOCHS, s.LR, s.WEIGHT_DECAY, list(s.BETAS), s.SCHEDULER, s.EARLY_STOP_PATIENCE) == (
        "AdamW", 300, 0.0006, 0.01, [0.9, 0.999], "cosine", 0)
    assert s.MIN_LR == pytest.approx(0.0006 * 0.1**3)
    teacher_1 = load_cfg(TEACHER_1, [])
    assert (s1.DISTILLER.TYPE, s1.DISTILLER.TEACHER, s1.DISTILLER.STUDENT, s1.DISTILLER.STUDENT_PRETRAINED) == (
        "CONKD", "resnet101", "resnet18", "")
    assert s1.DISTILLER.TEACHER_CKPT == _student_best(teacher_1)  # cell 7: encoder_teacher.pt + its head
    c = s1.CONKD  # cell 11: LS_KD(teacher head, student head, T 2) + 0.15 * two-view SupCon(0.07), no CE
    assert (c.KD_ON, c.CE_WEIGHT, c.KD_WEIGHT, c.SUPCON_WEIGHT, c.TEMPERATURE, c.SUPCON_TEMPERATURE) == (
        "embeddings", 0.0, 1.0, 0.15, 2.0, 0.07)
    assert (c.SUPCON_VARIANT, c.PROJ_DIM) == ("two_view", 128)
    s = s2.SOLVER  # cells 14-16: Lion 1e-4 / 1e-4, ReduceLROnPlateau(0.1, 3) and early stop 5 on the loss, 50 epochs
    assert (s.TYPE, s.EPOCHS, s.LR, s.WEIGHT_DECAY, list(s.BETAS)) == ("Lion", 50, 0.0001, 0.0001, [0.9, 0.99])
    assert (s.SCHEDULER, s.PLATEAU_METRIC, s.PLATEAU_FACTOR, s.PLATEAU_PATIENCE, s.MIN_LR) == (
        "plateau", "test_loss", 0.1, 3, 0.0)
    assert s.EARLY_STOP_PATIENCE == 5 and s.WARMUP_EPOCHS == 0
    assert (s2.DISTILLER.TYPE, s2.DISTILLER.STUDENT, s2.DISTILLER.STUDENT_PRETRAINED) == (
        "NONE", "resnet18", _student_best(s1))
    # the heads: the teacher's read from its stage-1 file (frozen), the student's 512 -> 512 -> 128 trained
    head = torch.nn.Sequential(torch.nn.Linear(2048, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 128))
    torch.save({"extra": {f"head.{k}": v for k, v in head.state_dict().items()}}, tmp_path / "teacher")
    cfg = load_cfg(STUDENT_1, ["DISTILLER.TEACHER_CKPT", str(tmp_path / "teacher")])
    distiller = build_distiller(cfg, build_model("resnet18", 10), build_model("resnet101", 10),
                                facts=DatasetFacts(input_size=(32, 32)))
    assert _params(distiller.teacher.kdlab_proj_head) == SEED_TEACHER_HEAD
    assert distiller.extra_parameter_count() == SEED_STUDENT_HEAD
    # stage 2: the seed's Classifier on the frozen encoder, the only trainable part
    model = configure_classifier(distiller.student, s2.CLASSIFIER, 10)
    assert [type(m).__name__ for m in model.fc] == ["Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    assert (model.fc[0].out_features, model.fc[3].p, model.fc[4].in_features) == (128, 0.4, 128)
    assert _trainable(model) == SEED_CLASSIFIER and _params(model) == _encoder_params("resnet18") + SEED_CLASSIFIER


def test_conkd_lion_stages_train_one_epoch_from_the_cli(tmp_path):
    """The four stages chained as the seed runs them, each reading the previous run's student_best."""
    write_imagefolder_dataset(tmp_path / "data", layout="imagenette2", n_train=10, n_val=1, size=(40, 36))
    runs, done = tmp_path / "logs" / "imagenette", {}
    chain = [("t1", TEACHER_1, "DISTILLER.STUDENT_PRETRAINED", None),  # no ImageNet weights here
             ("t2", TEACHER_2, "DISTILLER.STUDENT_PRETRAINED", "t1"),
             ("s1", STUDENT_1, "DISTILLER.TEACHER_CKPT", "t1"),
             ("s2", STUDENT_2, "DISTILLER.STUDENT_PRETRAINED", "s1")]
    for stage, path, key, source in chain:
        start = str(done[source] / "student_best") if source else ""
        res = call_tool("train.py", "--cfg", path, *_tiny_opts(tmp_path, key, start, "SOLVER.BATCH_SIZE", "8"))
        assert res.returncode == 0, res.stderr[-2000:]
        done[stage] = runs / load_cfg(path, []).EXPERIMENT.NAME
        metrics = json.load(open(done[stage] / "metrics.json"))
        assert metrics["last_epoch"] == 1 and metrics["select_metric"] == "val_loss", metrics

    def load(stage: str, name: str = "student_best") -> dict:
        return torch.load(done[stage] / name, weights_only=True)

    assert load("t1")["extra"]["head.2.weight"].shape == (128, 2048)  # the teacher's head, saved with it
    assert load("s1")["extra"]["head.2.weight"].shape == (128, 512)  # the student's own head
    for stage_1, stage_2 in (("t1", "t2"), ("s1", "s2")):  # stage 2 trains the classifier alone
        before, after = load(stage_1)["model"], load(stage_2, "student_latest")["model"]
        assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("fc."))
    assert not torch.equal(load("t1")["model"]["fc.weight"], load("t2", "student_latest")["model"]["fc.weight"])
    assert load("s2", "student_latest")["model"]["fc.4.weight"].shape == (10, 128)


# resnet101-18-teacher-student.ipynb cell 16's log: the held-out loss of epochs 1-15 ("Early stopping triggered.")
SEED_STAGE_2_VALID_LOSS = [0.270264, 0.188096, 0.134247, 0.097907, 0.077816, 0.066450, 0.060405, 0.056554,
                           0.053749, 0.052998, 0.053443, 0.054920, 0.056750, 0.060282, 0.060507]


def test_conkd_lion_stage2_stops_and_cuts_the_lr_where_the_seed_did(tmp_path, monkeypatch):
    """Stage 2's SOLVER on the seed's held-out losses: lowest at epoch 10, the LR cut to 1e-5 after 4 worse
    epochs (ReduceLROnPlateau patience 3), the loop stopped after epoch 15 (early_stop_patience 5)."""
    from conftest import digits_opts

    from kdlab.engine.run import train
    from kdlab.engine.trainer import Trainer

    s = load_cfg(STUDENT_2, []).SOLVER
    keys = ("TYPE", "LR", "WEIGHT_DECAY", "BETAS", "SCHEDULER", "PLATEAU_METRIC", "PLATEAU_FACTOR",
            "PLATEAU_PATIENCE", "MIN_LR", "EARLY_STOP_PATIENCE", "SELECT_METRIC")
    losses = iter(SEED_STAGE_2_VALID_LOSS)
    monkeypatch.setattr(Trainer, "evaluate", lambda self, test=False: {
        "test_loss": next(losses), "test_acc": 50.0, "test_acc_top5": 100.0})
    opts = digits_opts(str(tmp_path), epochs=s.EPOCHS, **{f"SOLVER.{k}": s[k] for k in keys},
                       **{"SOLVER.MAX_STEPS_PER_EPOCH": 1, "DATASET.NUM_WORKERS": 0, "SOLVER.AMP": False})
    summary = train(load_cfg(os.path.join(REPO, "configs", "digits", "vanilla", "digits_teacher.yaml"), opts))
    assert (summary["last_epoch"], summary["best_epoch"], summary["best_score"]) == (15, 10, 0.052998)
    assert [h["lr"] for h in summary["history"]] == pytest.approx([1e-4] * 14 + [1e-5])
