"""LG (the LS repo's tiny-transformers distillation of ViT students): the loss as the reference's
distill.py/trainer.py compute it, the teacher fed a resized input, the locality-guidance term, the
resized CIFAR pipeline, timm's cosine schedule, the no-decay parameter groups, and a CLI smoke run."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO
from fixtures_data import write_cifar

from kdlab.config import load_cfg
from kdlab.distillers import DatasetFacts, build_distiller
from kdlab.engine.optim import CosineTimm, weight_decay_groups
from kdlab.errors import ConfigError
from kdlab.models import build_model

KD_LS = os.path.join(REPO, "configs", "cifar100", "vit", "deit_tiny_kd_ls.yaml")
LG_CFG = os.path.join(REPO, "configs", "cifar100", "vit", "pit_tiny_lg.yaml")
SIZE = 32  # the students are built at 32x32 here (patch 16: 2x2 tokens) to stay fast


def _distiller(config, *opts, student="deit_tiny", **kwargs):
    cfg = load_cfg(config, ["SOLVER.DEVICE", "cpu", "DISTILLER.MODEL_KWARGS.IMG_SIZE", str(SIZE), *opts])
    torch.manual_seed(0)
    s = build_model(student, 10, img_size=SIZE, drop_path_rate=0.0, **kwargs)
    t = build_model("resnet8", 10)
    return cfg, build_distiller(cfg, s, t, facts=DatasetFacts(num_classes=10, input_size=(SIZE, SIZE))).double()


def _reference_logit_loss(logits_s, logits_t, temperature, stand, extra):
    """tiny-transformers' logit_distill_loss (pycls/models/distill.py), verbatim in substance."""
    def normalize(z):
        return (z - z.mean(dim=-1, keepdim=True)) / (1e-7 + z.std(dim=-1, keepdim=True))
    s, t = (normalize(logits_s), normalize(logits_t)) if stand else (logits_s, logits_t)
    weight = extra if stand else 1
    kl = F.kl_div(F.log_softmax(s / temperature, dim=1), F.softmax(t / temperature, dim=1), reduction="none")
    return weight * kl.sum(1).mean() * temperature * temperature


@pytest.mark.parametrize("stand", [True, False])
def test_kd_terms_are_the_reference_ones_on_the_distillation_head(stand):
    cfg, d = _distiller(KD_LS, "EXPERIMENT.LOGIT_STAND", str(stand), distilled=True)
    for p in d.student.parameters():
        torch.nn.init.normal_(p, std=0.05)
    seen = []
    d.teacher.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[-1]))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, SIZE, SIZE, generator=g, dtype=torch.float64), torch.randint(0, 10, (4,), generator=g)
    d.train()
    logits, losses = d(x, y)
    assert seen == [32]
    _, feats = d.student(x)
    with torch.no_grad():
        t_logits, _ = d.teacher(F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False))
    assert set(losses) == {"loss_ce", "loss_kd"}
    torch.testing.assert_close(losses["loss_ce"], 0.5 * F.cross_entropy(logits, y), rtol=1e-12, atol=0)
    expected = cfg.LG.LOGIT_WEIGHT * _reference_logit_loss(feats["distill_logits"], t_logits, 2.0, stand, 10.0)
    torch.testing.assert_close(losses["loss_kd"], expected, rtol=1e-12, atol=0)


def test_teacher_sees_the_input_resized_to_teacher_img_size():
    _, d = _distiller(KD_LS, "LG.TEACHER_IMG_SIZE", "16", distilled=True)
    seen = []
    d.teacher.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:])))
    d.train()(torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64), torch.tensor([1, 2]))
    assert seen == [(16, 16)]


def test_locality_guidance_term_trains_the_student_and_its_1x1_convs():
    cfg, d = _distiller(LG_CFG, student="pit_tiny")
    assert [c.in_channels for c in d.feature_transforms] == [64, 128, 256]
    assert [c.out_channels for c in d.feature_transforms] == [16, 32, 64]  # resnet8's stage widths
    d.train()
    _, losses = d(torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64), torch.tensor([1, 2]))
    assert set(losses) == {"loss_ce", "loss_feat"} and losses["loss_feat"] > 0
    losses["loss_feat"].backward()
    assert all(c.weight.grad.abs().sum() > 0 for c in d.feature_transforms)
    assert d.student.patch_embed.conv.weight.grad.abs().sum() > 0
    assert d.extra_parameter_count() == sum(p.numel() for p in d.feature_transforms.parameters())


def test_locality_guidance_index_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match=r"LG\.INTER_STUDENT_INDEX \[0, 6, 12\]: the model has 12 maps"):
        _distiller(LG_CFG, "LG.INTER_STUDENT_INDEX", "[0, 6, 12]", student="pit_tiny")


def test_cosine_timm_is_timms_cosine_lr_scheduler():
    from timm.scheduler.cosine_lr import CosineLRScheduler

    cfg = load_cfg(KD_LS, ["SOLVER.EPOCHS", "30", "SOLVER.WARMUP_EPOCHS", "5"])
    ours = CosineTimm(cfg)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.LR)
    ref = CosineLRScheduler(opt, t_initial=30, lr_min=cfg.SOLVER.MIN_LR, warmup_t=5,
                            warmup_lr_init=cfg.SOLVER.WARMUP_FACTOR * cfg.SOLVER.LR)
    for epoch in range(1, 31):  # the reference trains epoch e (0-based) at the LR of scheduler.step(e)
        ref.step(epoch - 1)
        assert ours.lr(epoch) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)


def test_no_decay_groups_are_the_references():
    model = build_model("pvt_tiny", 10, img_size=SIZE)
    decay, no_decay = weight_decay_groups(model.named_parameters(), 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"cls_token", "pos_embed1", "pos_embed4", "head.bias", "norm.weight"} <= skipped
    assert "head.weight" not in skipped and "block1.0.attn.q.weight" not in skipped
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


def test_cifar_resized_for_vits_uses_the_tiny_transformers_pipeline(tmp_path):
    from kdlab.data.build import build_datasets

    written = write_cifar(tmp_path, "cifar100", n_train=4, n_test=2)
    cfg = load_cfg(KD_LS, ["DATASET.ROOT", str(tmp_path), "DATASET.IMAGE_SIZE", "48"])
    splits = build_datasets(cfg)
    assert splits.input_size == (48, 48) and splits.train_batch_transform is None
    assert splits.train[0][0].shape == (3, 48, 48)
    image = splits.val[0][0]
    from PIL import Image
    raw = Image.fromarray(written["x_test"][0].transpose(1, 2, 0)).resize((48, 48), Image.BILINEAR)
    expected = (torch.from_numpy(np.asarray(raw, dtype=np.float32)).permute(2, 0, 1) / 255
                - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    torch.testing.assert_close(image, expected, rtol=0, atol=1e-5)


def test_tiny_transformers_pipeline_is_cifars_only():
    cfg = load_cfg(None, ["DATASET.PIPELINE", "tiny_transformers", "DATASET.IMAGE_SIZE", "64"])
    assert cfg.DATASET.IMAGE_SIZE == 64
    with pytest.raises(ConfigError, match=r"DATASET\.PIPELINE 'tiny_transformers': DATASET\.TYPE digits takes ''"):
        load_cfg(None, ["DATASET.TYPE", "digits", "DATASET.PIPELINE", "tiny_transformers"])


def test_kd_ls_trains_from_the_cli(tmp_path):
    write_cifar(tmp_path / "data", "cifar100", n_train=8, n_test=4)
    ckpt = tmp_path / "teacher.pth"
    torch.save({"model": build_model("resnet56", 100).state_dict()}, ckpt)
    cmd = [sys.executable, os.path.join(REPO, "tools", "train.py"), "--cfg", KD_LS,
           "DATASET.ROOT", str(tmp_path / "data"), "LOG.PREFIX", str(tmp_path / "logs"), "SOLVER.EPOCHS", "1",
           "SOLVER.BATCH_SIZE", "4", "SOLVER.MAX_STEPS_PER_EPOCH", "1", "DATASET.TEST.BATCH_SIZE", "4",
           "DATASET.NUM_WORKERS", "0", "SOLVER.DEVICE", "cpu", "LOG.PROGRESS", "False", "SOLVER.AMP", "False",
           "SOLVER.CHANNELS_LAST", "False", "DATASET.IMAGE_SIZE", "48", "DISTILLER.MODEL_KWARGS.IMG_SIZE", "48",
           "DISTILLER.TEACHER_CKPT", str(ckpt)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert "LG resnet56 -> deit_tiny" in log and "logit standardization ON" in log
    assert "lr 5e-07" in log  # the first warm-up epoch: LR * WARMUP_FACTOR
    loss = float(log.split("train loss ")[1].split()[0])
    assert math.isfinite(loss) and loss > 0
