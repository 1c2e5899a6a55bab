"""FEATKD on vectors and maps, mse or cosine per pair, per-pair weights, the seed's connector, and the
segmentation KD term over labelled or all pixels (KD and FEATKD)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from kdlab.config import get_cfg, load_cfg
from kdlab.distillers import DatasetFacts, build_distiller
from kdlab.distillers.connectors import FeatureConnector, VectorConnector
from kdlab.distillers.losses import feature_cosine_loss, pixel_kd_loss
from kdlab.errors import ConfigError
from kdlab.models import build_model


def _digits(*opts, teacher="digits_teacher"):
    cfg = get_cfg()
    cfg.merge_from_list(["DISTILLER.TYPE", "FEATKD", "FEATKD.INPUT_SIZE", "[8, 8]", *opts])
    torch.manual_seed(0)
    return build_distiller(cfg, build_model("digits_student", 10, in_channels=1),
                           build_model(teacher, 10, in_channels=1), facts=DatasetFacts(input_size=(8, 8)))


def _batch():
    torch.manual_seed(1)
    return torch.randn(6, 1, 8, 8), torch.arange(6) % 10


def test_cosine_loss_is_one_minus_cos_over_channels():
    a, b = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 2.0], [3.0, 3.0]])
    assert feature_cosine_loss(a, b).item() == pytest.approx((1.0 + 0.0) / 2)
    maps_s, maps_t = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    expected = (1 - F.cosine_similarity(maps_s, maps_t, dim=1)).mean()  # the Elec475 seed's form
    assert feature_cosine_loss(maps_s, maps_t).item() == pytest.approx(expected.item(), rel=1e-6)


def test_pooled_vectors_pair_with_a_linear_connector_and_mse():
    d = _digits("FEATKD.STUDENT_LAYERS", "['pooled_feat']", "FEATKD.TEACHER_LAYERS", "['pooled_feat']",
                "FEATKD.BETA", "2.0")
    (connector,) = d.connectors
    assert isinstance(connector, VectorConnector) and isinstance(connector.linear, nn.Linear)
    assert (connector.linear.in_features, connector.linear.out_features) == (32, 128)
    d.train()
    image, target = _batch()
    _, losses = d(image, target, epoch=1)
    with torch.no_grad():
        f_s, f_t = d.student(image)[1]["pooled_feat"], d.teacher(image)[1]["pooled_feat"]
    expected = 2.0 * F.mse_loss(connector(f_s), f_t)
    assert losses["loss_feat"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_equal_vectors_need_no_connector():
    d = _digits("FEATKD.STUDENT_LAYERS", "['pooled_feat']", "FEATKD.TEACHER_LAYERS", "['pooled_feat']",
                teacher="digits_student")
    assert isinstance(d.connectors[0].linear, nn.Identity) and d.extra_parameter_count() == 0


def test_per_pair_losses_and_weights_sum_with_beta():
    opts = ["FEATKD.STUDENT_LAYERS", "[1, 'pooled_feat']", "FEATKD.TEACHER_LAYERS", "[1, 'pooled_feat']",
            "FEATKD.BETA", "3.0"]
    d = _digits(*opts, "FEATKD.PAIR_LOSSES", "['mse', 'cosine']", "FEATKD.PAIR_WEIGHTS", "[0.5, 2.0]").train()
    image, target = _batch()
    _, losses = d(image, target, epoch=1)
    with torch.no_grad():
        (_, fs), (_, ft) = d.student(image), d.teacher(image)
    mse = F.mse_loss(d.connectors[0](fs["feats"][1], ft["feats"][1].shape[-2:]), ft["feats"][1])
    cos = (1 - F.cosine_similarity(d.connectors[1](fs["pooled_feat"]), ft["pooled_feat"], dim=1)).mean()
    assert losses["loss_feat"].item() == pytest.approx(3.0 * (0.5 * mse + 2.0 * cos).item(), rel=1e-5)
    # no weights: the mean over pairs, as before
    d = _digits(*opts, "FEATKD.PAIR_LOSSES", "['mse', 'cosine']").train()
    _, mean_losses = d(image, target, epoch=1)
    assert mean_losses["loss_feat"].item() == pytest.approx(3.0 * (mse + cos).item() / 2, rel=1e-5)


def test_conv_connector_is_the_seeds_align_layer():
    conv = FeatureConnector(4, 8, batch_norm=False)
    assert isinstance(conv.conv, nn.Conv2d) and conv.conv.bias is not None and isinstance(conv.bn, nn.Identity)
    assert isinstance(FeatureConnector(8, 8, batch_norm=False).conv, nn.Identity)
    x = torch.randn(2, 4, 6, 6)  # the seed interpolates (up or down) first, then aligns: the two commute
    for size in ((12, 12), (3, 3)):
        resized = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        torch.testing.assert_close(conv(x, size), conv.conv(resized), rtol=1e-5, atol=1e-5)
    d = _digits("FEATKD.CONNECTOR", "conv", "FEATKD.STUDENT_LAYERS", "[1, 2]", "FEATKD.TEACHER_LAYERS", "[1, 3]")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.connectors.modules())


@pytest.mark.parametrize("opts, match", [
    (["FEATKD.STUDENT_LAYERS", "['pooled_feat', 1]"], r"pair two C x H x W maps or two vectors"),
    (["FEATKD.STUDENT_LAYERS", "['pooled', 1]"], r"FEATKD.STUDENT_LAYERS: 'pooled' is not a feature.*pooled_feat"),
    (["FEATKD.PAIR_WEIGHTS", "[1.0, 2.0, 3.0]"], r"FEATKD.PAIR_WEIGHTS must have 1 entry or one per layer pair"),
    (["FEATKD.PAIR_LOSSES", "['mse', 'mse', 'mse']"], r"FEATKD.PAIR_LOSSES must have 1 entry"),
])
def test_bad_pairs_are_config_errors(opts, match):
    with pytest.raises(ConfigError, match=match):
        _digits(*opts)


@pytest.mark.parametrize("key, value", [("FEATKD.PAIR_LOSSES", "['cosin']"), ("FEATKD.PIXELS", "every"),
                                        ("FEATKD.CONNECTOR", "conv_relu"), ("KD.PIXELS", "labeled")])
def test_unknown_names_are_refused_at_load(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + ".*unknown name"):
        load_cfg(None, [key, value])


def test_all_pixels_is_the_seeds_batchmean_kl():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 3, 4), torch.randn(2, 5, 3, 4)
    target = torch.randint(0, 5, (2, 3, 4))
    target[:, 0] = 255
    temp = 4.0
    seed = nn.KLDivLoss(reduction="batchmean")(F.log_softmax(s / temp, 1), F.softmax(t / temp, 1)) * temp**2
    assert pixel_kd_loss(s, t, target, temp, pixels="all").item() == pytest.approx(seed.item(), rel=1e-5)
    assert pixel_kd_loss(s, t, None, temp, pixels="all").item() == pytest.approx(seed.item(), rel=1e-5)
    labelled = pixel_kd_loss(s, t, target, temp)
    assert labelled.item() != pytest.approx(seed.item(), rel=1e-3)


@pytest.mark.parametrize("method, key", [("KD", "KD.PIXELS"), ("FEATKD", "FEATKD.PIXELS")])
def test_distillers_take_the_pixel_mode(method, key):
    cfg = get_cfg()
    cfg.merge_from_list(["DATASET.TYPE", "voc", "DISTILLER.TYPE", method, "FEATKD.STUDENT_LAYERS", "[2]",
                         "FEATKD.TEACHER_LAYERS", "[2]", key, "all"])
    torch.manual_seed(0)
    student, teacher = build_model("seg_small", 21), build_model("seg_small", 21, width=1.5)
    d = build_distiller(cfg, student, teacher, facts=DatasetFacts(num_classes=21, input_size=(32, 32))).train()
    image, target = torch.randn(2, 3, 32, 32), torch.randint(0, 21, (2, 32, 32))
    target[:, :8] = 255
    logits, losses = d(image, target, epoch=1)
    with torch.no_grad():
        t_logits = teacher(image)[0]
    weight = cfg.KD.LOSS.KD_WEIGHT if method == "KD" else cfg.FEATKD.ALPHA
    expected = weight * pixel_kd_loss(logits.detach(), t_logits, target, 4.0, pixels="all")
    assert losses["loss_kd"].item() == pytest.approx(expected.item(), rel=1e-5)
