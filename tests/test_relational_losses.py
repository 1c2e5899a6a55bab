"""PKT, RKD and KDSVD losses: what each compares, shown by what leaves it unchanged.

Their exact values against mdistiller's are in test_distiller_reference_steps.py (float64 steps);
these tests show the relational nature of each term: it depends only on how the samples of a batch
relate to each other, so transformations that keep those relations give zero loss.
"""

from __future__ import annotations

import pytest
import torch

from kdlab.distillers.feature_losses import feature_svd, kdsvd_loss, pkt_loss, rkd_terms
from kdlab.errors import ConfigError


def _randn(*shape, seed: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _rotation(dim: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(_randn(dim, dim, seed=seed))
    return q


def test_pkt_sees_only_cosine_similarities():
    t = _randn(16, 24, seed=0)
    same = (t @ _rotation(24, 1)) * 3.0  # rotated and scaled: same cosines between samples
    assert pkt_loss(same, t).abs() < 1e-12
    assert pkt_loss(_randn(16, 24, seed=2), t) > 1e-4


def test_pkt_compares_features_of_different_widths():
    s = _randn(16, 8, seed=3).requires_grad_()
    loss = pkt_loss(s, _randn(16, 40, seed=4))
    loss.backward()
    assert loss > 0 and s.grad.abs().sum() > 0


def test_rkd_terms_are_invariant_to_rotation_scale_and_translation():
    t = _randn(12, 20, seed=5)
    moved = (t @ _rotation(20, 6)) * 0.25 + 7.0
    distance, angle = rkd_terms(moved, t)
    assert distance.abs() < 1e-12 and angle.abs() < 1e-12


def test_rkd_angle_term_sees_what_distances_do_not():
    """Stretching one axis changes distances and angles; the angle term alone trains the student."""
    t = _randn(12, 6, seed=7)
    stretched = t * torch.tensor([4.0, 1, 1, 1, 1, 1], dtype=t.dtype)
    distance, angle = rkd_terms(stretched.requires_grad_(), t)
    assert distance > 1e-3 and angle > 1e-3
    (grad_angle,) = torch.autograd.grad(angle, stretched)
    assert grad_angle.abs().sum() > 0


def test_rkd_epsilon_floors_the_squared_distances():
    t = _randn(12, 6, seed=8)
    s = _randn(12, 6, seed=9)
    floor = 1e6  # above every squared distance: all distances equal, so the normalized matrix is 1 off the diagonal
    d_floor, _ = rkd_terms(s, t, eps=floor)
    d_other, _ = rkd_terms(_randn(12, 6, seed=10), t, eps=floor)
    assert torch.equal(d_floor, d_other)
    assert not torch.equal(rkd_terms(s, t)[0], d_floor)


def test_feature_svd_views_maps_as_ch_by_w_matrices_in_float32():
    feat = _randn(4, 3, 5, 6, seed=11)
    s, v = feature_svd(feat, 2)
    assert s.dtype == v.dtype == torch.float32  # the reference's .float()
    assert s.shape == (4, 2) and v.shape == (4, 6, 2)  # right singular vectors over the W = 6 columns
    _, s_full, vh = torch.linalg.svd(feat.reshape(4, 15, 6).float(), full_matrices=False)
    assert torch.allclose(s, torch.nn.functional.normalize(s_full[:, :2], dim=1))
    assert torch.allclose(v.abs(), vh.mH[:, :, :2].abs(), atol=1e-6)


def test_kdsvd_is_zero_for_the_teachers_own_maps_and_trains_a_student():
    teacher = [_randn(4, 8, 6, 6, seed=12), _randn(4, 16, 3, 3, seed=13)]
    assert kdsvd_loss(teacher, teacher, 1).abs() < 1e-10
    # student maps may have other channel counts, but the same widths W
    student = [_randn(4, 5, 6, 6, seed=14).requires_grad_(), _randn(4, 7, 3, 3, seed=15).requires_grad_()]
    loss = kdsvd_loss(student, teacher, 1)
    loss.backward()
    assert loss > 0 and all(m.grad is not None and m.grad.abs().sum() > 0 for m in student)


def test_kdsvd_refuses_a_bad_k_and_maps_of_different_widths():
    from kdlab.distillers.kdsvd import KDSVD
    from kdlab.models import build_model

    torch.manual_seed(0)
    student, teacher = build_model("digits_student", 10), build_model("digits_teacher", 10)
    with pytest.raises(ConfigError, match="KDSVD.K"):
        KDSVD(student, teacher, k=0, ce_weight=1.0, feat_weight=1.0)
    distiller = KDSVD(student, teacher, k=1, ce_weight=1.0, feat_weight=1.0).train()
    image, target = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    assert distiller.forward_train(image, target)[1]["loss_feat"] > 0
    narrower = [f[..., :-1] for f in teacher(image)[1]["feats"]]
    distiller.teacher_forward = lambda x: (None, {"feats": narrower})
    with pytest.raises(ConfigError, match="same width W"):
        distiller.forward_train(image, target)
