"""Three float64 training steps equal those of the LS repo's tiny-transformers trainer (losses of each step, weights
after the last, with the reference's AdamW parameter groups): DeiT-Tiny KD + logit standardization
(configs/cifar100/vit/deit_tiny_kd_ls.yaml) and DeiT-Tiny with the locality guidance (deit_tiny_lg.yaml), the
student at 48 px, the teacher fed 32 px. Stored by tests/reference/make_vit_refs.py; the shared setup (weights
by recipe, the teachers, the batches) is tests/reference/vit_step.py."""

from __future__ import annotations

import json
import os
import sys

import pytest
from conftest import REPO

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "reference"))
import vit_step as V  # noqa: E402

from kdlab.config import load_cfg  # noqa: E402
from kdlab.distillers import DatasetFacts, build_distiller  # noqa: E402
from kdlab.engine.optim import build_optimizer, build_scheduler, set_lr, weight_decay_groups  # noqa: E402
from kdlab.models import build_model  # noqa: E402

REF = json.load(open(os.path.join(os.path.dirname(__file__), "reference", "vit_refs.json")))["step"]


def test_deit_kd_ls_steps_equal_the_reference_in_float64():
    cfg = load_cfg(os.path.join(REPO, "configs", "cifar100", "vit", "deit_tiny_kd_ls.yaml"), [
        "DATASET.IMAGE_SIZE", str(V.STUDENT_SIZE), "DISTILLER.MODEL_KWARGS.IMG_SIZE", str(V.STUDENT_SIZE),
        "DISTILLER.MODEL_KWARGS.DROP_PATH_RATE", "0.0", "SOLVER.WARMUP_EPOCHS", "0",
        "LG.TEACHER_IMG_SIZE", str(V.TEACHER_SIZE)])
    assert cfg.LG.ENABLE_LOGIT and cfg.EXPERIMENT.LOGIT_STAND and cfg.LG.EXTRA_WEIGHT_IN == 10.0
    student = build_model("deit_tiny", V.CLASSES, img_size=V.STUDENT_SIZE, drop_path_rate=0.0, distilled=True)
    V.set_initial_weights(student)
    facts = DatasetFacts(num_classes=V.CLASSES, input_size=(V.STUDENT_SIZE,) * 2)
    distiller = build_distiller(cfg, student.double(), V.LinearTeacher(kdlab=True), facts=facts).double().train()
    learnable = {id(p) for p in distiller.learnable_parameters()}
    optimizer = build_optimizer(weight_decay_groups(
        ((n, p) for n, p in distiller.named_parameters() if id(p) in learnable), cfg.SOLVER.WEIGHT_DECAY), cfg)
    set_lr(optimizer, build_scheduler(cfg).lr(1))
    for step, ref in enumerate(REF["steps"]):
        x, y = V.batch(step)
        _, losses = distiller(x, y)
        assert losses["loss_ce"].item() == pytest.approx(ref["loss_ce"], rel=1e-10, abs=0)
        assert losses["loss_kd"].item() == pytest.approx(ref["loss_kd"], rel=1e-10, abs=0)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(ref["lr"], rel=1e-12)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    ours = V.digests(student)
    assert ours.keys() == REF["weights"].keys()
    for name, (total, squares) in REF["weights"].items():
        assert ours[name][0] == pytest.approx(total, rel=1e-9, abs=1e-12), name
        assert ours[name][1] == pytest.approx(squares, rel=1e-9), name


def test_deit_locality_guidance_steps_equal_the_reference_in_float64():
    """configs/cifar100/vit/deit_tiny_lg.yaml against the reference's deit-ti_c100_ours.yaml (ENABLE_INTER, linear
    1x1 convs, student blocks 0/6/11 to the teacher's stages), with a three-stage conv teacher fed 32 px."""
    ref = json.load(open(os.path.join(os.path.dirname(__file__), "reference", "vit_refs.json")))["lg_step"]
    cfg = load_cfg(os.path.join(REPO, "configs", "cifar100", "vit", "deit_tiny_lg.yaml"), [
        "DATASET.IMAGE_SIZE", str(V.STUDENT_SIZE), "DISTILLER.MODEL_KWARGS.IMG_SIZE", str(V.STUDENT_SIZE),
        "DISTILLER.MODEL_KWARGS.DROP_PATH_RATE", "0.0", "SOLVER.WARMUP_EPOCHS", "0",
        "LG.TEACHER_IMG_SIZE", str(V.TEACHER_SIZE)])
    student = build_model("deit_tiny", V.CLASSES, img_size=V.STUDENT_SIZE, drop_path_rate=0.0)
    facts = DatasetFacts(num_classes=V.CLASSES, input_size=(V.STUDENT_SIZE,) * 2)
    distiller = build_distiller(cfg, student, V.ConvTeacher(kdlab=True), facts=facts)
    V.set_initial_weights(student)
    V.set_initial_weights(distiller.feature_transforms, lambda n: "feature_transforms." + n)
    distiller = distiller.double().train()
    learnable = {id(p) for p in distiller.learnable_parameters()}
    optimizer = build_optimizer(weight_decay_groups(
        ((n, p) for n, p in distiller.named_parameters() if id(p) in learnable), cfg.SOLVER.WEIGHT_DECAY), cfg)
    set_lr(optimizer, build_scheduler(cfg).lr(1))
    for step, expected in enumerate(ref["steps"]):
        x, y = V.batch(step)
        _, losses = distiller(x, y)
        assert set(losses) == {"loss_ce", "loss_feat"}
        assert losses["loss_ce"].item() == pytest.approx(expected["loss_ce"], rel=1e-10, abs=0)
        assert losses["loss_feat"].item() == pytest.approx(expected["loss_feat"], rel=1e-10, abs=0)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    ours = V.digests(student)
    ours.update(V.digests(distiller.feature_transforms, lambda n: "feature_transforms." + n))
    assert ours.keys() == ref["weights"].keys()
    for name, (total, squares) in ref["weights"].items():
        assert ours[name][0] == pytest.approx(total, rel=1e-9, abs=1e-12), name
        assert ours[name][1] == pytest.approx(squares, rel=1e-9), name
