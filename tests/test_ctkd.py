"""CTKD's own behaviour: the temperature takes the reversed gradient (it ascends the KD loss the student
descends), lambda follows CTKD's cosine (or linear) curriculum, instance mode gives one temperature per
sample with the CTKD README's per-sample loss, and the keys are checked at load time."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdlab.config import load_cfg
from kdlab.distillers import DatasetFacts, build_distiller
from kdlab.distillers.ctkd import cosine_decay, instance_kd_loss, linear_decay
from kdlab.distillers.losses import kd_loss
from kdlab.errors import ConfigError
from kdlab.models import build_model

CFG = str(Path(__file__).resolve().parents[1] / "configs" / "digits" / "ctkd" / "digits_teacher_digits_student.yaml")


def _distiller(*opts, method="CTKD"):
    cfg = load_cfg(CFG, ["DISTILLER.TYPE", method, "SOLVER.DEVICE", "cpu", *opts])
    torch.manual_seed(0)
    student = build_model("digits_student", 10, in_channels=1)
    teacher = build_model("digits_teacher", 10, in_channels=1)
    return build_distiller(cfg, student, teacher, facts=DatasetFacts(num_classes=10)).double().train()


def _batch(n=16):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g)


def test_lambda_follows_ctkd_cosine_schedule():
    d = _distiller()
    lambdas = [d.lambda_at(e) for e in range(0, 15)]
    assert lambdas[0] == 0.0 and lambdas[5] == pytest.approx(-0.5) and lambdas[10:] == [-1.0] * 5
    assert lambdas[1] == pytest.approx((math.cos(math.pi / 10) + 1) / 2 - 1)  # -0.0245, as in CTKD's logs
    assert all(a > b for a, b in zip(lambdas[:10], lambdas[1:11]))  # 0 -> -1, strictly, over DECAY_LOOPS epochs
    assert cosine_decay(3, 0.0, -1.0, 10) == d.lambda_at(3)
    linear = _distiller("CTKD.COSINE_DECAY", "False")
    assert [linear.lambda_at(e) for e in (0, 1, 5, 9, 10, 30)] == pytest.approx([0, -0.1, -0.5, -0.9, -0.9, -0.9])
    assert linear_decay(4, 0.0, -1.0, 10) == pytest.approx(-0.4)
    assert _distiller("CTKD.DECAY_LOOPS", "20").lambda_at(10) == pytest.approx(-0.5)


@pytest.mark.parametrize("epoch", [1, 5, 12])
def test_temperature_gradient_is_plain_kds_times_lambda(epoch):
    """The raw temperature's gradient is lambda times plain KD's dL/dr: reversed (lambda < 0); the student's is KD's."""
    d = _distiller()
    image, target = _batch()
    _, losses = d(image, target, epoch=epoch)
    sum(losses.values()).backward()
    reversed_grad = d.temp_module.global_T.grad.clone()
    student_grad = [p.grad.clone() for p in d.student.parameters()]
    d.zero_grad()
    # Plain KD at the same temperature, with T = 1 + 20 sigmoid(r) taking the ordinary gradient
    raw = d.temp_module.global_T.detach().clone().requires_grad_(True)
    logits_s, _ = d.student(image)
    logits_t, _ = d.teacher_forward(image)
    temperature = 1.0 + 20.0 * torch.sigmoid(raw)
    loss = 0.1 * F.cross_entropy(logits_s, target) + 0.9 * kd_loss(logits_s, logits_t, temperature).squeeze()
    loss.backward()
    lam = d.lambda_at(epoch)
    assert lam < 0 and raw.grad.abs().item() > 0
    torch.testing.assert_close(reversed_grad, lam * raw.grad, rtol=1e-12, atol=0)
    assert torch.sign(reversed_grad) == -torch.sign(raw.grad)
    for got, p in zip(student_grad, d.student.parameters()):
        torch.testing.assert_close(got, p.grad, rtol=1e-12, atol=1e-15)


def test_temperature_moves_against_the_student():
    """An SGD step on the temperature alone raises the KD loss (the student's steps lower it)."""
    d = _distiller()
    image, target = _batch()
    optimizer = torch.optim.SGD(d.temp_module.parameters(), lr=50.0)
    for _ in range(3):
        _, before = d(image, target, epoch=12)
        optimizer.zero_grad()
        before["loss_kd"].backward()
        optimizer.step()
        _, after = d(image, target, epoch=12)
        assert after["loss_kd"].item() > before["loss_kd"].item()


def test_instance_mode_gives_per_sample_temperatures_and_the_readme_loss():
    d = _distiller("CTKD.MODE", "instance", "CTKD.HIDDEN", "16")
    assert d.extra_parameter_count() == (20 * 16 + 16) + (16 + 1)
    image, target = _batch()
    _, losses = d(image, target, epoch=3)
    temps = d.last_temperature
    assert temps.shape == (16, 1) and temps.unique().numel() == 16
    assert ((temps > 1.0) & (temps < 21.0)).all()
    # CTKD README's instance-wise loop: KD_loss = sum_i KL_Loss(y_s[i], y_t[i], T[i]) / N
    logits_s, _ = d.student(image)
    logits_t, _ = d.teacher_forward(image)
    total = 0
    for i in range(16):
        out = F.log_softmax(logits_s[i].unsqueeze(0) / temps[i], dim=1)
        teach = F.softmax(logits_t[i].unsqueeze(0) / temps[i], dim=1) + 10 ** (-7)
        total += temps[i] * temps[i] * torch.sum(teach * (torch.log(teach) - out))
    torch.testing.assert_close(losses["loss_kd"], 0.9 * (total / 16).squeeze(), rtol=1e-12, atol=0)
    torch.testing.assert_close(instance_kd_loss(logits_s, logits_t, temps), (total / 16).squeeze(), rtol=1e-12, atol=0)
    losses["loss_kd"].backward()
    assert d.temp_module.mlp[0].weight.grad.abs().sum() > 0


def test_ctkd_dkd_learns_its_temperature_and_takes_no_instance_mode():
    d = _distiller(method="CTKD_DKD")
    image, target = _batch()
    _, losses = d(image, target, epoch=5)
    sum(losses.values()).backward()
    grad = d.temp_module.global_T.grad
    assert torch.isfinite(grad).all() and grad.abs().item() > 0  # torch's kl_div would give NaN here
    with pytest.raises(ConfigError, match="CTKD.MODE 'instance' is defined for DISTILLER.TYPE CTKD only"):
        _distiller("CTKD.MODE", "instance", method="CTKD_DKD")


@pytest.mark.parametrize("key, value, match", [
    ("CTKD.MODE", "layer", "CTKD.MODE must be one of global, instance"),
    ("CTKD.DECAY_LOOPS", "0", "CTKD.DECAY_LOOPS must be > 0"),
    ("CTKD.T_START", "0.0", "CTKD.T_START must be > 0"),
    ("CTKD.HIDDEN", "0", "CTKD.HIDDEN must be > 0"),
])
def test_bad_keys_are_refused_at_load(key, value, match):
    with pytest.raises(ConfigError, match=match):
        load_cfg(CFG, [key, value])


def test_epoch_is_required():
    d = _distiller()
    with pytest.raises(ValueError, match="needs epoch="):
        d(*_batch())
