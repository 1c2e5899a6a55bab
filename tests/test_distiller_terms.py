"""What each distillation method adds to plain training, shown on the digits models.

A floor on accuracy does not show that a method works (a vanilla digits student reaches 98 %).
These tests check, for every method in the registry that uses a teacher:
- each of its terms other than cross-entropy, alone, sends a gradient into the student, and at
  least one of them follows the teacher;
- over a short run those terms fall, and fall further than when the same student is trained on
  cross-entropy alone; its connectors/heads are trained;
- with logit standardization its KD term ignores the scale of the student's logits (so the
  student is free to keep its own scale), and without it the term does not;
- --logit-stand is accepted exactly for the methods whose class declares supports_logit_stand.
Unit checks of single methods (DKD's warm-up, MLKD's two views, shapes) are in test_distillers.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from kdlab.config import load_cfg
from kdlab.data import build_datasets
from kdlab.distillers import DISTILLERS, build_distiller
from kdlab.errors import ConfigError
from kdlab.models import build_model

REPO = Path(__file__).resolve().parents[1]
METHODS = [n for n in DISTILLERS.names() if getattr(DISTILLERS.get(n), "needs_teacher", True)]
LS_METHODS = [n for n in METHODS if DISTILLERS.get(n).supports_logit_stand]
# CONKD standardizes its KD logits whatever --logit-stand says (the flag only sets T and the weight).
ALWAYS_STANDARDIZED = {"CONKD"}
LATE_EPOCH = 1000  # past every warm-up
STEPS, BATCH = 40, 64
# CRD scores against a memory bank that starts random: while its first pass over the 1437 digits (23 steps)
# fills it with learnt embeddings, its term rises (3.18 -> 4.31 at step 20), then falls (2.10 at step 80,
# against 3.02 when training on cross-entropy alone).
STEPS_FOR = {"CRD": 80}


def digits_cfg(method: str, opts=(), **kwargs):
    path = REPO / "configs" / "digits" / method.lower() / "digits_teacher_digits_student.yaml"
    assert path.is_file(), f"{method} needs a digits config at {path.relative_to(REPO)}"
    return load_cfg(str(path), ["SOLVER.DEVICE", "cpu", *opts], **kwargs)


def distiller_for(cfg, teacher_ckpt: str | None = None, seed: int = 0):
    torch.manual_seed(seed)
    teacher = build_model("digits_teacher", 10)
    if teacher_ckpt:
        teacher.load_state_dict(torch.load(teacher_ckpt, weights_only=True)["model"])
    return build_distiller(cfg, build_model("digits_student", 10), teacher)


def distillation_terms(losses: dict) -> list[str]:
    terms = [k for k in losses if k != "loss_ce"]
    assert terms, f"no distillation term besides loss_ce: {sorted(losses)}"
    return terms


def fixed_batch(method: str, n: int = 32):
    """n training images (both views for two-view methods), their labels and indices."""
    cls = DISTILLERS.get(method)
    splits = build_datasets(digits_cfg(method), two_views=cls.two_views)
    torch.manual_seed(1)
    return next(iter(DataLoader(splits.train, batch_size=n, shuffle=False)))


def test_every_method_is_covered():
    assert METHODS and "NONE" not in METHODS and "KD" in METHODS
    assert set(LS_METHODS) >= {"KD", "DKD"} and ALWAYS_STANDARDIZED <= set(LS_METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_terms_reach_the_student_and_follow_the_teacher(method):
    image, target, index = fixed_batch(method)
    distiller = distiller_for(digits_cfg(method)).train()
    _, losses = distiller(image, target, epoch=LATE_EPOCH, index=index)
    other = distiller_for(digits_cfg(method), seed=1).train()
    other.student.load_state_dict(distiller.student.state_dict())
    for a, b in zip(distiller.extra_modules(), other.extra_modules()):
        b.load_state_dict(a.state_dict())
    _, other_losses = other(image, target, epoch=LATE_EPOCH, index=index)  # only the teacher differs
    assert torch.equal(losses["loss_ce"], other_losses["loss_ce"])
    # Same student, same batch: a term that ignores the teacher is bit-identical. rtol 1e-6, not looser: VID's
    # term is dominated by its teacher-free log-variance on these untrained teachers' small maps (~4e-5 apart).
    follow = [t for t in distillation_terms(losses) if not torch.isclose(losses[t], other_losses[t], rtol=1e-6)]
    assert follow, f"{method}: no term depends on the teacher"
    for term in distillation_terms(losses):
        distiller.zero_grad()
        losses[term].backward(retain_graph=True)
        grads = [p.grad.abs().sum() for p in distiller.student.parameters() if p.grad is not None]
        assert grads and sum(grads) > 0, f"{method}: {term} alone sends no gradient into the student"


def _endless(loader):
    while True:
        yield from loader


def _train(method: str, teacher_ckpt: str, terms: str) -> tuple[dict, dict, list[bool]]:
    """STEPS SGD steps on all losses (terms="all") or on loss_ce only; the losses on a fixed batch before and after."""
    cfg = digits_cfg(method)
    distiller = distiller_for(cfg, teacher_ckpt)
    probe = fixed_batch(method, n=128)
    splits = build_datasets(cfg, two_views=distiller.two_views)
    loader = DataLoader(splits.train, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0))

    def probe_losses() -> dict:
        distiller.train()  # training-mode losses; the student's BatchNorm uses the probe's own statistics
        state = {k: v.clone() for k, v in distiller.state_dict().items()}
        with torch.no_grad():
            _, losses = distiller(probe[0], probe[1], epoch=LATE_EPOCH, index=probe[2])
        distiller.load_state_dict(state)  # undo running-statistics updates
        return {k: v.item() for k, v in losses.items()}

    before = probe_losses()
    extra = [p.detach().clone() for m in distiller.extra_modules() for p in m.parameters()]
    optimizer = torch.optim.SGD(distiller.learnable_parameters(), lr=0.05, momentum=0.9)
    for _, (image, target, index) in zip(range(STEPS_FOR.get(method, STEPS)), _endless(loader)):
        _, losses = distiller(image, target, epoch=LATE_EPOCH, index=index)
        loss = sum(losses.values()) if terms == "all" else losses["loss_ce"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after_extra = [p.detach() for m in distiller.extra_modules() for p in m.parameters()]
    return before, probe_losses(), [not torch.equal(a, b) for a, b in zip(extra, after_extra)]


@pytest.mark.parametrize("method", METHODS)
def test_short_run_lowers_the_distillation_terms(method, digits_teacher_ckpt):
    before, after, extra_changed = _train(method, digits_teacher_ckpt, "all")
    _, ce_only, _ = _train(method, digits_teacher_ckpt, "ce")
    for term in distillation_terms(before):
        assert after[term] < before[term], f"{method}: {term} rose from {before[term]:.4g} to {after[term]:.4g}"
        assert after[term] < 0.9 * ce_only[term], (
            f"{method}: {term} {after[term]:.4g} is not below {ce_only[term]:.4g} of cross-entropy training"
        )
    assert all(extra_changed), f"{method}: a connector/head parameter was not updated"


def _scaled_student(distiller, scale: float, shift: float):
    forward = distiller.student.forward

    def scaled(x):
        logits, feats = forward(x)
        return scale * logits + shift, feats

    distiller.student.forward = scaled
    return distiller


@pytest.mark.parametrize("method", LS_METHODS)
def test_logit_stand_makes_the_kd_term_ignore_the_student_logit_scale(method):
    """LS compares z-scores: scaling the student's logits by 3 (and shifting them) leaves loss_kd as it is.

    Plain KD's loss_kd changes with the scale, so it pulls the student's logits to the teacher's scale.
    Other terms keep their own rules (MLKD's class/batch correlations use the raw logits, as in its paper).
    """
    image, target, index = fixed_batch(method)

    def loss_kd(logit_stand: bool, scale: float) -> float:
        distiller = _scaled_student(distiller_for(digits_cfg(method, logit_stand=logit_stand)), scale, 0.5).train()
        with torch.no_grad():
            _, losses = distiller(image, target, epoch=LATE_EPOCH, index=index)
        return losses["loss_kd"].item()

    assert loss_kd(True, 3.0) == pytest.approx(loss_kd(True, 1.0), rel=1e-4)
    plain, plain_scaled = loss_kd(False, 1.0), loss_kd(False, 3.0)
    if method in ALWAYS_STANDARDIZED:
        assert plain_scaled == pytest.approx(plain, rel=1e-4)
    else:
        assert abs(plain_scaled - plain) > 0.05 * plain, (plain, plain_scaled)


@pytest.mark.parametrize("method", DISTILLERS.names())
def test_logit_stand_is_accepted_exactly_where_the_class_declares_it(method):
    opts = ["DISTILLER.TYPE", method]
    if DISTILLERS.get(method).supports_logit_stand:
        assert load_cfg(None, opts, logit_stand=True).EXPERIMENT.LOGIT_STAND is True
    else:
        with pytest.raises(ConfigError, match=f"--logit-stand is not supported for DISTILLER.TYPE '{method}'"):
            load_cfg(None, opts, logit_stand=True)
