"""ReviewKD: the HCL loss by hand, the warm-up, the ABFs' order and shapes, and the peer YAML pairs.

Its exactness against mdistiller (losses and student/ABF weights over three float64 SGD steps) is the
`reviewkd` case of test_distiller_reference_steps.py; its terms and ABF training on digits are
covered by test_distiller_terms.py like every method's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdlab.config import load_cfg
from kdlab.distillers import DatasetFacts, build_distiller
from kdlab.distillers.feature_losses import hcl_loss
from kdlab.errors import ConfigError
from kdlab.models import build_model, resolve_model_name

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "configs" / "digits" / "reviewkd" / "digits_teacher_digits_student.yaml"


def digits_distiller(*opts):
    torch.manual_seed(0)
    cfg = load_cfg(str(DIGITS), ["SOLVER.DEVICE", "cpu", *opts])
    return build_distiller(cfg, build_model("digits_student", 10, in_channels=1),
                           build_model("digits_teacher", 10, in_channels=1), facts=DatasetFacts(input_size=(8, 8)))


def test_hcl_loss_by_hand():
    # 2x2 maps: the full MSE (0 + 1 + 4 + 9) / 4 = 3.5 and, of the levels 4, 2, 1, only 1x1 is below H = 2:
    # its squared mean difference 1.5^2 with weight 1/2, the sum divided by 1 + 1/2.
    s2, t2 = torch.arange(4.0).view(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    # 1x1 maps (the pooled features): the MSE alone.
    s1, t1 = torch.full((1, 1, 1, 1), 2.0), torch.zeros(1, 1, 1, 1)
    expected = (3.5 + 0.5 * 1.5**2) / 1.5 + 4.0
    assert hcl_loss([s2, s1], [t2, t1]).item() == pytest.approx(expected, rel=1e-7)
    # 8x8: levels 4, 2, 1 with weights 1/2, 1/4, 1/8; a constant difference d gives d^2 at every level.
    d = torch.full((2, 3, 8, 8), 0.5)
    assert hcl_loss([d], [torch.zeros_like(d)]).item() == pytest.approx(0.25, rel=1e-7)
    s8 = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t8 = torch.zeros_like(s8)
    pool = torch.nn.functional.adaptive_avg_pool2d
    by_hand = (s8.pow(2).mean() + sum(w * pool(s8, lv).pow(2).mean() for lv, w in ((4, 0.5), (2, 0.25), (1, 0.125))))
    assert hcl_loss([s8], [t8]).item() == pytest.approx((by_hand / 1.875).item(), rel=1e-6)


def test_hcl_loss_dtypes_and_teacher_gradient():
    s = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    loss = hcl_loss([s], [t])
    assert loss.dtype == torch.float64
    loss.backward()
    assert s.grad is not None and t.grad is None  # the teacher's maps are targets
    assert hcl_loss([s.detach().half()], [t.detach().half()]).dtype == torch.float32


def test_warmup_scales_only_the_review_term():
    distiller = digits_distiller().train()  # WARMUP_EPOCHS 5
    image, target = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(8)
    state = {k: v.clone() for k, v in distiller.state_dict().items()}

    def losses(epoch, *opts):
        d = digits_distiller(*opts).train() if opts else distiller
        d.load_state_dict(state)
        with torch.no_grad():
            return {k: v.item() for k, v in d(image, target, epoch=epoch)[1].items()}

    full = losses(5)
    assert losses(50) == full
    for epoch in (1, 2, 4):
        got = losses(epoch)
        assert got["loss_ce"] == full["loss_ce"]
        assert got["loss_feat"] == pytest.approx(full["loss_feat"] * epoch / 5, rel=1e-6)
    assert losses(1, "REVIEWKD.WARMUP_EPOCHS", "0") == full  # 0: no warm-up
    with pytest.raises(ValueError, match="epoch"):
        distiller(image, target)


def test_abfs_are_registered_as_mdistiller_registers_them():
    """Deepest first, the deepest without attention conv; a reference checkpoint's ABF weights copy in by order."""
    distiller = digits_distiller()
    shapes = [tuple(p.shape) for _, p in distiller.abfs.named_parameters()]
    expected = []
    for c_in, c_out, fuse in ((32, 128, False), (32, 128, True), (16, 64, True), (16, 32, True)):  # abfs.0 .. 3
        expected += [(32, c_in, 1, 1), (32,), (32,), (c_out, 32, 3, 3), (c_out,), (c_out,)]
        expected += [(2, 64, 1, 1), (2,)] if fuse else []
    assert shapes == expected
    assert list(distiller.abfs.state_dict())[:6] == [
        "0.conv1.0.weight", "0.conv1.1.weight", "0.conv1.1.bias", "0.conv1.1.running_mean",
        "0.conv1.1.running_var", "0.conv1.1.num_batches_tracked",
    ]
    # the ABF outputs match the teacher's reviewed maps (shallow to deep, pooled last)
    _, feats = distiller.student(torch.randn(2, 1, 8, 8))
    assert [tuple(r.shape[1:]) for r in distiller.review(feats)] == [(32, 8, 8), (64, 4, 4), (128, 2, 2), (128, 1, 1)]


def test_stu_preact_reads_the_pre_activation_features():
    plain, preact = digits_distiller(), digits_distiller("REVIEWKD.STU_PREACT", "True")
    preact.load_state_dict(plain.state_dict())
    plain.eval(), preact.eval()
    _, feats = plain.student(torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2)))
    a, b = plain.review(feats), preact.review(feats)
    assert torch.equal(a[-1], b[-1])  # the pooled feature has no pre-activation; deeper levels see the same input
    assert not torch.equal(a[0], b[0])


def test_wrong_lists_name_the_key_and_the_models_values():
    with pytest.raises(ConfigError, match=r"REVIEWKD.IN_CHANNELS \[16, 16, 32, 64\] .* channels \[16, 16, 32, 32\]"):
        digits_distiller("REVIEWKD.IN_CHANNELS", "[16, 16, 32, 64]")
    with pytest.raises(ConfigError, match=r"REVIEWKD.OUT_SHAPES \[1, 2, 4, 4\] .* \[1, 2, 4, 8\]"):
        digits_distiller("REVIEWKD.OUT_SHAPES", "[1, 2, 4, 4]")
    with pytest.raises(ConfigError, match=r"teacher has 4 review features"):
        digits_distiller(*[t for k in ("IN_CHANNELS", "OUT_CHANNELS", "SHAPES", "OUT_SHAPES")
                           for t in (f"REVIEWKD.{k}", "[1, 1, 1]")])
    with pytest.raises(ConfigError, match="as many in each"):
        digits_distiller("REVIEWKD.SHAPES", "[1, 4, 8]")
    distiller = digits_distiller().train()  # trained at another input size than the keys were set for
    with pytest.raises(ConfigError, match=r"REVIEWKD.SHAPES \[1, 4, 8, 8\]"):
        distiller(torch.randn(2, 1, 16, 16), torch.arange(2), epoch=1)


def _peer_distiller(peer: Path):
    cfg = load_cfg(str(peer), ["SOLVER.DEVICE", "cpu"])
    imagenet = cfg.DATASET.TYPE == "imagenet"
    classes, size = (1000, 224) if imagenet else (100, 32)
    models = [build_model(resolve_model_name(n, cfg.DATASET.TYPE), classes)
              for n in (cfg.DISTILLER.STUDENT, cfg.DISTILLER.TEACHER)]
    return build_distiller(cfg, *models, facts=DatasetFacts(input_size=(size, size)))


@pytest.mark.parametrize("peer", [f"{repo}/{pair}/reviewkd.yaml" for repo in ("mdistiller", "logit-standardization-KD")
                                  for pair in ("cifar100", "imagenet/r34_r18")])
def test_peer_yamls_build_with_their_channel_lists(peer, peer_config_dir):
    distiller = _peer_distiller(Path(peer_config_dir) / peer)
    assert len(distiller.abfs) == len(distiller.shapes) and distiller.extra_parameter_count() > 0


@pytest.mark.parametrize("peer", ["mdistiller/imagenet/r50_mv1/reviewkd.yaml",
                                  "logit-standardization-KD/imagenet/r50_mv2/reviewkd.yaml"])
def test_peer_yamls_for_mobilenet_v1_layouts_build(peer, peer_config_dir):
    """mdistiller's r50_mv1 names MobileNetV1; logit-standardization-KD's ImageNet "MobileNetV2" is the same
    network (channels 128..1024), which kdlab builds for that name, so both files' channel lists fit."""
    distiller = _peer_distiller(Path(peer_config_dir) / peer)
    assert type(distiller.student).__name__ == "MobileNetV1"
    assert len(distiller.abfs) == 5 and distiller.extra_parameter_count() > 0
