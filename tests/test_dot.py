"""DOT (SOLVER.TRAINER dot): two momentum buffers, DELTA 0 = SGD, the reference's quirks, AMP, clipping, resume.

The steps against mdistiller's own DOT trainer are in test_distiller_reference_steps.py (kd_dot, dkd_dot).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, digits_opts

from kdlab.config import load_cfg
from kdlab.distillers import DatasetFacts, build_distiller
from kdlab.engine import dot
from kdlab.engine import trainer as trainer_mod
from kdlab.engine.optim import build_optimizer
from kdlab.engine.run import train
from kdlab.engine.trainer import TrainingInterrupted
from kdlab.errors import ConfigError
from kdlab.models import build_model

CFG = os.path.join(REPO, "configs/digits/dot/digits_teacher_digits_student.yaml")
FACTS = DatasetFacts(num_classes=10, input_size=(8, 8), in_channels=1)


def _setup(*opts: str, dtype=torch.float64):
    """A KD digits distiller (seeded) and the optimizer SOLVER.TRAINER / opts give it."""
    cfg = load_cfg(CFG, ["SOLVER.DEVICE", "cpu", *opts])
    torch.manual_seed(0)
    student = build_model("digits_student", 10, in_channels=1)
    teacher = build_model("digits_teacher", 10, in_channels=1)
    distiller = build_distiller(cfg, student, teacher, facts=FACTS).to(dtype).train()
    return cfg, distiller, build_optimizer(distiller.learnable_parameters(), cfg)


def _batch(step: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(16, 1, 8, 8, generator=g, dtype=dtype), torch.randint(0, 10, (16,), generator=g)


def _run(opts: list, steps: int = 3, scaler=None, clip: float = 0.0, dtype=torch.float64):
    cfg, distiller, optimizer = _setup(*opts, dtype=dtype)
    scaler = scaler or torch.amp.GradScaler("cpu", enabled=False)
    for step in range(steps):
        image, target = _batch(step, dtype)
        _, losses = distiller(image, target, epoch=1)
        if cfg.SOLVER.TRAINER == "dot":
            dot.backward_and_step(optimizer, losses, scaler, clip)
        else:
            optimizer.zero_grad()
            sum(losses.values()).backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(distiller.learnable_parameters(), clip)
            optimizer.step()
    return distiller, optimizer


def _max_rel(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(((p - q).norm() / q.norm()).item() for p, q in zip(a.student.parameters(), b.student.parameters()))


@pytest.mark.parametrize("clip", [0.0, 0.1])
def test_delta_zero_is_sgd_on_the_summed_loss_and_delta_changes_it(clip):
    sgd, _ = _run(["SOLVER.TRAINER", "base"], clip=clip)
    same, _ = _run(["SOLVER.DOT.DELTA", "0.0"], clip=clip)
    other, _ = _run(["SOLVER.DOT.DELTA", "0.075"], clip=clip)
    assert _max_rel(same, sgd) < 1e-12  # the two updates in sequence: equal up to rounding
    assert _max_rel(other, sgd) > 1e-4
    if clip:  # the clipping acts (one factor for both gradients, from the norm of their sum)
        assert _max_rel(other, _run(["SOLVER.DOT.DELTA", "0.075"])[0]) > 1e-2


def test_two_momentum_buffers_where_sgd_keeps_one():
    """After 2 steps every student parameter holds a CE and a KD buffer; with DELTA 0 they add up to SGD's."""
    _, sgd_opt = _run(["SOLVER.TRAINER", "base"], steps=2)
    for delta, equal in (("0.0", True), ("0.075", False)):
        distiller, opt = _run(["SOLVER.DOT.DELTA", delta], steps=2)
        assert opt.param_groups[0]["momentum"] == pytest.approx(0.9 - float(delta))
        assert opt.param_groups[0]["momentum_kd"] == pytest.approx(0.9 + float(delta))
        for p, q in zip(opt.param_groups[0]["params"], sgd_opt.param_groups[0]["params"]):
            ce, kd = opt.state[p]["momentum_buffer"], opt.state[p]["momentum_kd_buffer"]
            total, single = ce + kd, sgd_opt.state[q]["momentum_buffer"]
            assert not torch.allclose(ce, kd)
            assert torch.allclose(total, single, rtol=1e-10, atol=1e-14) == equal


def test_reference_update_rules_for_ce_only_and_kd_only_parameters():
    """mdistiller's dot(): a KD-only parameter gets no weight decay at its first step and the mean momentum later."""
    lr, wd, m, mk = 0.1, 0.01, 0.8, 0.95
    both, kd_only, ce_only = (torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64)) for _ in range(3))
    opt = dot.DistillationOrientedTrainer([both, kd_only, ce_only], lr=lr, momentum=m, momentum_kd=mk,
                                          weight_decay=wd)
    g_ce, g_kd = torch.tensor([0.5, 0.25], dtype=torch.float64), torch.tensor([-1.0, 2.0], dtype=torch.float64)
    expect = {k: p.detach().clone() for k, p in (("both", both), ("kd", kd_only), ("ce", ce_only))}
    bufs = {}
    for step in range(2):
        opt.zero_grad(set_to_none=True)
        both.grad, kd_only.grad = g_kd.clone(), g_kd.clone()
        opt.step_kd()
        opt.zero_grad(set_to_none=True)
        both.grad, ce_only.grad = g_ce.clone(), g_ce.clone()
        opt.step()
        mean = (m + mk) / 2
        d_both, d_ce = g_ce + wd * expect["both"], g_ce + wd * expect["ce"]
        d_kd = g_kd if step == 0 else g_kd + wd * expect["kd"]
        bufs = {"both_ce": d_both if step == 0 else m * bufs["both_ce"] + d_both,
                "both_kd": g_kd if step == 0 else mk * bufs["both_kd"] + g_kd,
                "kd": d_kd if step == 0 else mean * bufs["kd"] + d_kd,
                "ce": d_ce if step == 0 else mean * bufs["ce"] + d_ce}
        expect["both"] = expect["both"] - lr * bufs["both_ce"] - lr * bufs["both_kd"]
        expect["kd"] = expect["kd"] - lr * bufs["kd"]
        expect["ce"] = expect["ce"] - lr * bufs["ce"]
    for name, p in (("both", both), ("kd", kd_only), ("ce", ce_only)):
        torch.testing.assert_close(p.detach(), expect[name], rtol=1e-14, atol=1e-14)
    assert "momentum_kd_buffer" not in opt.state[ce_only] and "momentum_buffer" not in opt.state[kd_only]


def test_grad_scaler_unscales_both_gradients_and_skips_a_non_finite_kd_gradient():
    plain, _ = _run([], dtype=torch.float32)
    scaled, _ = _run([], scaler=torch.amp.GradScaler("cpu", init_scale=2.0**12), dtype=torch.float32)
    for p, q in zip(plain.student.parameters(), scaled.student.parameters()):
        assert torch.equal(p, q)  # scaling by a power of two and back is exact
    cfg, distiller, optimizer = _setup(dtype=torch.float32)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    before = [p.detach().clone() for p in distiller.student.parameters()]
    image, target = _batch(0, torch.float32)
    _, losses = distiller(image, target, epoch=1)
    losses["loss_kd"] = losses["loss_kd"] * torch.tensor(float("inf"))  # inf KD gradients, finite CE ones
    dot.backward_and_step(optimizer, losses, scaler)
    assert all(torch.equal(p, b) for p, b in zip(distiller.student.parameters(), before))
    assert not any(optimizer.state.values()) and not optimizer.kd_grad_buffer and scaler.get_scale() == 2.0**11


@pytest.mark.parametrize("opts, message", [
    (["SOLVER.TYPE", "Adam"], r"SOLVER\.TYPE 'Adam' would be ignored"),
    (["SOLVER.NESTEROV", "True"], r"SOLVER\.NESTEROV False"),
    (["SOLVER.DOT.DELTA", "0.95"], r"SOLVER\.DOT\.DELTA 0\.95: SOLVER\.MOMENTUM - DOT\.DELTA .* is -0\.05"),
    (["DISTILLER.TYPE", "NONE"], r"DISTILLER\.TYPE 'NONE' has no distillation term"),
])
def test_settings_dot_cannot_take_are_refused(opts, message):
    with pytest.raises(ConfigError, match=message):
        load_cfg(CFG, opts)


def test_method_without_a_distillation_term_is_refused_at_the_step():
    with pytest.raises(ConfigError, match=r"needs a loss_ce term and a distillation term.*\['loss_ce'\]"):
        dot.split_losses({"loss_ce": torch.zeros(())})


@pytest.mark.parametrize("peer, delta", [("mdistiller/cifar100/dot/res32x4_res8x4.yaml", 0.075),
                                         ("mdistiller/cifar100/dot/res32x4_shuv2.yaml", 0.075),
                                         ("mdistiller/cifar100/dot/vgg13_vgg8.yaml", 0.075),
                                         ("mdistiller/imagenet/r34_r18/dot.yaml", 0.09)])
def test_mdistillers_dot_configs_load_as_dot(peer_config_dir, peer, delta):
    cfg = load_cfg(os.path.join(peer_config_dir, peer))
    assert (cfg.SOLVER.TRAINER, cfg.SOLVER.DOT.DELTA, cfg.SOLVER.TYPE) == ("dot", delta, "SGD")
    assert type(build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)) is dot.DistillationOrientedTrainer


def test_dot_run_interrupted_mid_epoch_resumes_bit_identical(tmp_path, monkeypatch):
    """Both momentum buffers are in the checkpoint and come back: the resumed run ends as the uninterrupted one."""
    torch.manual_seed(0)
    teacher = build_model("digits_teacher", 10, in_channels=1)
    ckpt = str(tmp_path / "teacher.pth")
    torch.save({"format": "kdlab-student", "model": teacher.state_dict(), "arch": "digits_teacher",
                "num_classes": 10, "epoch": 0}, ckpt)
    extra = {"DISTILLER.TEACHER_CKPT": ckpt, "SOLVER.MAX_STEPS_PER_EPOCH": 5, "SOLVER.BATCH_SIZE": 32,
             "DATASET.AUGMENT": True, "SOLVER.GRAD_CLIP": 1.0}
    cfg = lambda prefix: load_cfg(CFG, digits_opts(prefix, epochs=2, **extra))  # noqa: E731
    reference = train(cfg(str(tmp_path / "ref")))["run_dir"]
    original = trainer_mod.Trainer.train_step

    def stop_at_step_7(self, batch, epoch, step, sums):
        out = original(self, batch, epoch, step, sums)
        if self.global_step == 6:
            self.stop_requested = True
        return out

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", stop_at_step_7)
    with pytest.raises(TrainingInterrupted):
        train(cfg(str(tmp_path / "cut")))
    monkeypatch.setattr(trainer_mod.Trainer, "train_step", original)
    run_dir = os.path.join(tmp_path, "cut", "digits", "kd,dot,digits_teacher,digits_student")
    state = torch.load(os.path.join(run_dir, "latest"), weights_only=True)
    assert (state["epoch"], state["step_in_epoch"]) == (1, 2)
    saved = state["optimizer"]["state"]
    assert saved and all({"momentum_buffer", "momentum_kd_buffer"} <= set(s) for s in saved.values())
    resumed = train(cfg(str(tmp_path / "cut")), resume=True)["run_dir"]
    a, b = (torch.load(os.path.join(d, "student_latest"), weights_only=True)["model"] for d in (resumed, reference))
    assert all(torch.equal(a[k], b[k]) for k in b)


def _torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           os.path.join(REPO, "tools/train.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_dot_under_ddp_averages_both_gradients_and_keeps_replicas_identical(tmp_path):
    """2 processes (gloo) = 1 process on the same global batch (GroupNorm: per-sample maths), and the ranks'
    weights stay bit-identical: DOT averages both gradients over the ranks itself (the forward is no_sync)."""
    torch.manual_seed(0)
    ckpt = str(tmp_path / "teacher.pth")
    torch.save({"format": "kdlab-student", "model": build_model("digits_teacher", 10, in_channels=1).state_dict(),
                "arch": "digits_teacher", "num_classes": 10, "epoch": 0}, ckpt)
    opts = ["--cfg", CFG, "DISTILLER.TEACHER_CKPT", ckpt, "SOLVER.EPOCHS", "1", "SOLVER.MAX_STEPS_PER_EPOCH", "8",
            "LOG.PROGRESS", "False", "SOLVER.DEVICE", "cpu"]
    runs = {name: _torchrun(n, *opts, "LOG.PREFIX", str(tmp_path / name), "DISTILLER.MODEL_KWARGS.NORM", "gn")
            for name, n in (("one", 1), ("two", 2))}
    for res in runs.values():
        assert res.returncode == 0, res.stderr[-3000:]
    assert "student weights identical on all 2 ranks: yes" in runs["two"].stderr
    a, b = (torch.load(tmp_path / name / "digits" / "kd,dot,digits_teacher,digits_student" / "student_latest",
                       weights_only=True)["model"] for name in ("one", "two"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
