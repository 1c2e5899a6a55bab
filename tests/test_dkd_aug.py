"""DKD_aug (DKD on MLKD's weak and strong views): its losses are the definition of kdlab/distillers/dkd_aug.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdlab.config import load_cfg
from kdlab.distillers import DISTILLERS, build_distiller
from kdlab.distillers.losses import dkd_loss
from kdlab.models import build_model

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "configs" / "digits" / "dkd_aug" / "digits_teacher_digits_student.yaml"


def make(opts=(), **kwargs):
    torch.manual_seed(0)
    cfg = load_cfg(str(DIGITS), list(opts), **kwargs)
    distiller = build_distiller(cfg, build_model("digits_student", 10), build_model("digits_teacher", 10))
    return cfg, distiller.train()


def views():
    g = torch.Generator().manual_seed(3)
    weak = torch.randn(12, 1, 8, 8, generator=g)
    return weak, weak.flip(-1) + 0.5 * torch.randn(weak.shape, generator=g), torch.arange(12) % 10


def expected(distiller, cfg, weak, strong, target, epoch, logit_stand=False):
    """The definition, written out: one student forward per view (train mode), the teacher per view."""
    node = cfg.DKD
    loss_ce, loss_kd = 0.0, 0.0
    for view in (weak, strong):
        s = distiller.student(view)[0]
        with torch.no_grad():
            t = distiller.teacher(view)[0]
        loss_ce = loss_ce + F.cross_entropy(s, target)
        loss_kd = loss_kd + dkd_loss(s, t, target, node.ALPHA, node.BETA, node.T, logit_stand)
    return node.CE_WEIGHT * loss_ce, min(epoch / node.WARMUP, 1.0) * loss_kd


def test_class_declares_two_views_and_dkds_group():
    cls = DISTILLERS.get("DKD_aug")
    assert cls.two_views and cls.group == "DKD" and cls.supports_logit_stand and cls.needs_teacher


@pytest.mark.parametrize("epoch", [1, 7])
def test_losses_are_dkd_on_each_view_plus_ce_on_each_view(epoch):
    cfg, distiller = make()
    weak, strong, target = views()
    logits, losses = distiller((weak, strong), target, epoch=epoch)
    ce, kd = expected(distiller, cfg, weak, strong, target, epoch)
    assert set(losses) == {"loss_ce", "loss_kd"}
    torch.testing.assert_close(losses["loss_ce"], ce, rtol=1e-6, atol=0)
    torch.testing.assert_close(losses["loss_kd"], kd, rtol=1e-6, atol=0)
    torch.testing.assert_close(logits, distiller.student(weak)[0])  # the weak view's logits are returned
    if epoch == 1:  # DKD's warm-up: 1 / WARMUP (5) of the full KD term
        _, full = expected(distiller, cfg, weak, strong, target, cfg.DKD.WARMUP)
        assert cfg.DKD.WARMUP == 5
        torch.testing.assert_close(losses["loss_kd"], full / 5, rtol=1e-6, atol=0)


def test_the_strong_view_counts():
    cfg, distiller = make()
    weak, strong, target = views()
    _, same = distiller((weak, weak), target, epoch=5)
    _, other = distiller((weak, strong), target, epoch=5)
    assert not torch.isclose(same["loss_kd"], other["loss_kd"]) and not torch.isclose(same["loss_ce"], other["loss_ce"])
    dkd_weak_only = dkd_loss(distiller.student(weak)[0], distiller.teacher(weak)[0].detach(), target,
                             cfg.DKD.ALPHA, cfg.DKD.BETA, cfg.DKD.T)
    torch.testing.assert_close(same["loss_kd"], 2 * dkd_weak_only, rtol=1e-6, atol=0)


def test_logit_stand_is_dkds():
    cfg, distiller = make(logit_stand=True, base_temp=2.0, kd_weight=9.0)
    plain = load_cfg(str(DIGITS))
    assert cfg.DKD.T == 2.0 and cfg.DKD.ALPHA == 9 * plain.DKD.ALPHA and cfg.DKD.BETA == 9 * plain.DKD.BETA
    weak, strong, target = views()
    _, losses = distiller((weak, strong), target, epoch=5)
    _, kd = expected(distiller, cfg, weak, strong, target, 5, logit_stand=True)
    torch.testing.assert_close(losses["loss_kd"], kd, rtol=1e-6, atol=0)


def test_one_image_instead_of_two_views_is_an_error():
    _, distiller = make()
    weak, _, target = views()
    with pytest.raises(ValueError, match=r"DKD_aug needs two views per batch: image = \(weak, strong\)"):
        distiller(weak, target, epoch=1)


def test_the_reference_config_loads_as_dkd_aug_with_two_views():
    cfg = load_cfg(str(REPO / "configs" / "cifar100" / "dkd" / "resnet32x4_resnet8x4_aug.yaml"))
    assert (cfg.DISTILLER.TYPE, cfg.SOLVER.TRAINER) == ("DKD_aug", "aug")
    assert DISTILLERS.get(cfg.DISTILLER.TYPE).two_views
