"""OFD and VID: what is specific to each (exactness to mdistiller is in test_distiller_reference_steps.py).

OFD: the margin is E[x | x < 0] of the teacher's BatchNorm output N(beta, gamma^2) (hand values and a
sampled mean), the partial L2 in each of its regions, the teacher normalizing with batch statistics
but left in eval mode with its statistics untouched, the modules the models name (mdistiller's), and
pairs mdistiller cannot build. VID: the term is the Gaussian negative log-likelihood, the variance
parameters get the gradient of that formula and train, and the shape probe leaves BatchNorm alone.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from kdlab.config import load_cfg
from kdlab.distillers import DatasetFacts, build_distiller
from kdlab.distillers.ofd import OFD, ofd_feat_loss, ofd_margin
from kdlab.distillers.vid import VID, vid_loss
from kdlab.errors import ConfigError
from kdlab.models import build_model, resolve_model_name
from kdlab.models.stages import bn_before_relu, stage_channels

REPO = Path(__file__).resolve().parents[1]
FACTS = DatasetFacts(num_classes=10, input_size=(8, 8), in_channels=1)


def digits(method: str, opts=()):
    cfg = load_cfg(str(REPO / f"configs/digits/{method}/digits_teacher_digits_student.yaml"), list(opts))
    torch.manual_seed(0)
    return build_distiller(cfg, build_model("digits_student", 10), build_model("digits_teacher", 10), facts=FACTS)


def _bn(weight, bias) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(len(weight))
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(weight))
        bn.bias.copy_(torch.tensor(bias))
    return bn


def _phi_tail(x: float) -> float:  # P(Z < x) for a standard normal, by erfc (not scipy)
    return 0.5 * math.erfc(-x / math.sqrt(2))


# ------------------------------------------------------------------------------------------------ OFD
def test_ofd_margin_is_the_mean_of_the_negative_part_of_the_bn_output():
    gamma, beta = [2.0, -1.0, 0.5, 0.5], [0.0, 1.0, -3.0, 3.0]
    margin = ofd_margin(_bn(gamma, beta)).flatten().tolist()
    pdf = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    expected = [
        -2.0 * pdf(0.0) / 0.5,  # beta 0: -s * sqrt(2 / pi)
        1.0 - 1.0 * pdf(1.0) / _phi_tail(-1.0),  # |gamma| is the scale
        -3.0 - 0.5 * pdf(6.0) / _phi_tail(6.0),
        -3 * 0.5,  # P(x < 0) = Phi(-6) < 0.001: -3s
    ]
    assert margin == pytest.approx(expected, rel=1e-6)
    g = torch.Generator().manual_seed(0)
    for s, m, want in zip(gamma[:3], beta[:3], margin[:3]):
        x = m + abs(s) * torch.randn(2_000_000, generator=g, dtype=torch.float64)
        assert x[x < 0].mean().item() == pytest.approx(want, abs=0.01)


def test_ofd_partial_l2_in_each_region():
    margin = torch.full((1, 6, 1, 1), -1.0)
    source = torch.tensor([0.5, -1.5, -0.2, -0.8, 1.0, 3.0]).reshape(1, 6, 1, 1)
    target = torch.tensor([-2.0, -2.0, -0.5, -0.5, 2.0, 2.0]).reshape(1, 6, 1, 1)
    # s > m >= t: (s - m)^2; both below m: 0; m < t <= 0 < ... s > t: (s - t)^2; s <= t <= 0: 0; t > 0: (s - t)^2
    per_channel = [1.5**2, 0.0, 0.3**2, 0.0, 1.0, 1.0]
    assert ofd_feat_loss(source, target, margin).item() == pytest.approx(sum(per_channel), rel=1e-6)
    two = torch.cat([source, 3 * source])  # summed over C, H, W, averaged over the batch
    assert ofd_feat_loss(two, torch.cat([target, target]), margin).item() == pytest.approx(
        (ofd_feat_loss(source, target, margin) + ofd_feat_loss(3 * source, target, margin)).item() / 2, rel=1e-6)


def test_ofd_margins_come_from_the_teachers_bns_and_weigh_the_deeper_stages_more():
    distiller = digits("ofd")
    bns = distiller.teacher.get_bn_before_relu()[-2:]  # the student has two stages: the teacher's last two
    for margin, bn in zip(distiller.margins(), bns):
        assert torch.equal(margin, ofd_margin(bn))
    assert "margin0" not in distiller.state_dict()  # derived from the teacher, not checkpointed
    assert [c[0].out_channels for c in distiller.connectors.connectors] == [64, 128]
    assert list(dict(distiller.connectors.named_parameters())) == [  # mdistiller's keys and order
        "connectors.0.0.weight", "connectors.0.1.weight", "connectors.0.1.bias",
        "connectors.1.0.weight", "connectors.1.1.weight", "connectors.1.1.bias"]


def test_ofd_teacher_uses_batch_statistics_but_stays_in_eval_mode_untouched():
    distiller = digits("ofd").train()
    for m in distiller.teacher.modules():
        if isinstance(m, nn.BatchNorm2d):  # running statistics far from any batch's
            m.running_mean.fill_(5.0)
    state = copy.deepcopy(distiller.teacher.state_dict())
    image = torch.randn(8, 1, 8, 8)
    _, feats = distiller.teacher_forward(image)
    _, in_train = copy.deepcopy(distiller.teacher).train()(image)
    _, in_eval = distiller.teacher(image)
    assert torch.equal(feats["preact_feats"][-1], in_train["preact_feats"][-1])
    assert not torch.allclose(feats["preact_feats"][-1], in_eval["preact_feats"][-1])
    assert not any(m.training for m in distiller.teacher.modules())
    assert all(torch.equal(v, state[k]) for k, v in distiller.teacher.state_dict().items())


def test_models_name_mdistillers_bn_before_relu_modules():
    """Paths as mdistiller's get_bn_before_relu() returns them (read off its models once); channels of stages[1:]."""
    expected = {
        "resnet8": ["layer1.0.bn2", "layer2.0.bn2", "layer3.0.bn2"],
        "resnet32x4": ["layer1.4.bn2", "layer2.4.bn2", "layer3.4.bn2"],
        "ResNet50": ["layer1.2.bn3", "layer2.3.bn3", "layer3.5.bn3", "layer4.2.bn3"],
        "wrn_40_2": ["block2.layer.0.bn1", "block3.layer.0.bn1", "bn1"],
        "vgg13": ["block1.4", "block2.4", "block3.4", "block4.4"],
        "MobileNetV2": ["blocks.1.1.conv.7", "blocks.2.2.conv.7", "blocks.4.2.conv.7", "blocks.6.0.conv.7"],
        "resnet18": ["layer2.1.bn2", "layer3.1.bn2", "layer4.1.bn2"],  # torchvision: mdistiller's ImageNet choice
        "resnet50": ["layer2.3.bn3", "layer3.5.bn3", "layer4.2.bn3"],
        "mobilenet_v2": ["features.3.conv.3", "features.6.conv.3", "features.13.conv.3", "features.17.conv.3"],
    }
    for name, paths in expected.items():
        model = build_model(name, 10)
        names = {id(m): n for n, m in model.named_modules()}
        bns = bn_before_relu(model)
        assert [names[id(b)] for b in bns] == paths, name
        assert [b.num_features for b in bns] == stage_channels(model)[-len(bns):], name
    with pytest.raises(ConfigError, match="get_bn_before_relu"):
        bn_before_relu(build_model("ShuffleV2", 10), "teacher")


def test_torchvision_resnet_preact_feats_are_the_stage_sums_before_relu():
    model = build_model("resnet18", 10).train()
    _, feats = model(torch.randn(2, 3, 64, 64))
    for act, pre in zip(feats["feats"][1:], feats["preact_feats"][1:]):
        assert (pre < 0).any() and torch.equal(torch.relu(pre), act)


@pytest.mark.parametrize("teacher, student, size", [("vgg8", "resnet8", 32), ("wrn_16_2", "ShuffleV1", 32)])
def test_ofd_builds_pairs_mdistiller_cannot(teacher, student, size):
    """vgg -> resnet (mdistiller pairs the first margins with the last stages: a shape error); ShuffleV1 students."""
    cfg = load_cfg(None, ["DISTILLER.TYPE", "OFD"])
    torch.manual_seed(0)
    distiller = build_distiller(cfg, build_model(student, 10), build_model(teacher, 10)).train()
    _, losses = distiller(torch.randn(4, 3, size, size), torch.arange(4))
    assert torch.isfinite(losses["loss_feat"]) and losses["loss_feat"] > 0


def test_ofd_imagenet_peer_config_builds_and_steps(peer_config_dir):
    cfg = load_cfg(str(Path(peer_config_dir) / "logit-standardization-KD/imagenet/r50_mv2/ofd.yaml"))
    models = [build_model(resolve_model_name(n, cfg.DATASET.TYPE), 10)
              for n in (cfg.DISTILLER.STUDENT, cfg.DISTILLER.TEACHER)]
    distiller = build_distiller(cfg, *models).train()
    assert [c[0].out_channels for c in distiller.connectors.connectors] == [512, 1024, 2048]
    _, losses = distiller(torch.randn(2, 3, 64, 64), torch.arange(2))
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in distiller.connectors.parameters())


def test_ofd_refuses_a_shufflenet_teacher():
    with pytest.raises(ConfigError, match="teacher .*get_bn_before_relu"):
        OFD(build_model("resnet8", 10), build_model("ShuffleV2", 10), 1.0, 1e-3)


# ------------------------------------------------------------------------------------------------ VID
def test_vid_loss_is_the_gaussian_nll_and_its_variance_gradient():
    g = torch.Generator().manual_seed(0)
    f_s, f_t = torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64), torch.randn(3, 6, 5, 5, generator=g,
                                                                                       dtype=torch.float64)
    regressor = nn.Conv2d(4, 6, 1, bias=False).double()
    log_scale = nn.Parameter(torch.randn(6, generator=g, dtype=torch.float64))
    loss = vid_loss(regressor, log_scale, f_s, f_t, eps=1e-3)
    mean = regressor(f_s).detach()
    var = (nn.functional.softplus(log_scale) + 1e-3).detach().view(1, -1, 1, 1)
    nll = -torch.distributions.Normal(mean, var.sqrt()).log_prob(f_t) - 0.5 * math.log(2 * math.pi)
    assert loss.item() == pytest.approx(nll.mean().item(), rel=1e-12)
    loss.backward()
    # d/dls of mean(0.5 (r^2 / v + log v)) with v = softplus(ls) + eps, per channel over N, H, W positions
    dv = (0.5 * (1 / var - (mean - f_t) ** 2 / var**2)).mean((0, 2, 3)) / 6
    assert torch.allclose(log_scale.grad, dv * torch.sigmoid(log_scale.detach()), rtol=1e-10)


def test_vid_variances_start_at_init_pred_var_and_train():
    distiller = digits("vid", ["VID.INIT_PRED_VAR", "3.0"]).train()
    assert list(distiller.state_dict()).count("log_scales.0") == 1
    for ls in distiller.log_scales:
        assert torch.allclose(nn.functional.softplus(ls) + distiller.eps, torch.full_like(ls, 3.0))
    learnable = {id(p) for p in distiller.learnable_parameters()}
    assert all(id(p) in learnable for p in distiller.log_scales)
    before = [p.detach().clone() for p in distiller.log_scales]
    optimizer = torch.optim.SGD(distiller.learnable_parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        _, losses = distiller(torch.randn(16, 1, 8, 8, generator=g), torch.arange(16) % 10)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    for b, p in zip(before, distiller.log_scales):
        assert (p - b).abs().max() > 1e-4


def test_vid_probe_leaves_batchnorm_statistics_alone():
    torch.manual_seed(0)
    student, teacher = build_model("resnet8", 10), build_model("resnet14", 10)
    states = [copy.deepcopy(m.state_dict()) for m in (student, teacher)]
    distiller = VID(student, teacher, 1.0, 1.0, input_size=(32, 32))
    assert [r[0].in_channels for r in distiller.regressors] == [16, 32, 64]
    for model, state in zip((student, teacher), states):
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("opts", [["VID.INIT_PRED_VAR", "1e-6"], ["VID.EPS", "-1.0"]])
def test_vid_bad_variance_settings_are_config_errors(opts):
    with pytest.raises(ConfigError, match="VID.INIT_PRED_VAR > VID.EPS"):
        digits("vid", opts)
