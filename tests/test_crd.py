"""CRD's pieces beyond the registry tests: negative sampling as mdistiller's datasets draw, the memory bank's
momentum update and checkpoint layout, the crd trainer, AMP. (Exactness of whole steps against mdistiller:
test_distiller_reference_steps.py; the bank under torchrun: test_distributed.py; resume: test_resume.py.)"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import REPO, digits_opts

from kdlab.config import load_cfg
from kdlab.data import build_datasets
from kdlab.distillers import build_distiller
from kdlab.distillers.crd import NegativeSampler, class_table
from kdlab.models import build_model

CFG = os.path.join(REPO, "configs/digits/crd/digits_teacher_digits_student.yaml")


def _targets() -> torch.Tensor:
    return torch.as_tensor(build_datasets(load_cfg(CFG, ["SOLVER.DEVICE", "cpu"])).train.targets)


def _mdistiller_cls_negative(label: list[int], num_classes: int) -> list[list[int]]:
    """mdistiller's CIFAR100InstanceSample.__init__ (percent 1.0), verbatim in spirit."""
    cls_positive = [[] for _ in range(num_classes)]
    for i in range(len(label)):
        cls_positive[label[i]].append(i)
    cls_negative = [[] for _ in range(num_classes)]
    for i in range(num_classes):
        for j in range(num_classes):
            if j != i:
                cls_negative[i].extend(cls_positive[j])
    return cls_negative


def test_class_table_is_mdistillers_negative_lists():
    targets = _targets()
    order, start, count = class_table(targets, 10)
    reference = _mdistiller_cls_negative(targets.tolist(), 10)
    for c in range(10):
        s, n = int(start[c]), int(count[c])
        assert torch.cat([order[:s], order[s + n:]]).tolist() == reference[c]


def test_exact_mode_draws_distinct_negatives_of_other_classes_repeatably():
    targets = _targets()
    sampler = NegativeSampler(targets, k=512, mode="exact", seed=0)
    index = torch.tensor([0, 5, 700, 1436])
    drawn = sampler(index, epoch=3)
    assert drawn.shape == (4, 513) and torch.equal(drawn[:, 0], index)  # the positive is the sample itself
    for row, i in zip(drawn, index):
        negatives = row[1:]
        assert (targets[negatives] != targets[i]).all()
        assert len(set(negatives.tolist())) == 512  # K <= the other classes' samples: no replacement
    assert torch.equal(drawn, sampler(index, epoch=3))  # a function of (SEED, epoch, batch indices)
    assert not torch.equal(drawn, sampler(index, epoch=4))
    assert not torch.equal(drawn, NegativeSampler(targets, k=512, seed=1)(index, epoch=3))


def test_relax_mode_takes_a_random_positive_of_the_class():
    targets = _targets()
    drawn = NegativeSampler(targets, k=8, mode="relax", seed=0)(torch.arange(200), epoch=1)
    assert torch.equal(targets[drawn[:, 0]], targets[:200])
    assert (drawn[:, 0] != torch.arange(200)).float().mean() > 0.9  # ~1/144 picks itself
    assert (targets[drawn[:, 1:]] != targets[:200, None]).all()


@pytest.mark.parametrize("k, always_replace", [(512, False), (2000, False), (512, True)])
def test_negatives_are_uniform_over_the_other_classes(k, always_replace):
    """Pearson's chi-square of the draws for one sample over its ~1290 candidates stays near its mean
    (the degrees of freedom): mdistiller's np.random.choice is uniform over cls_negative[target]. K 2000
    exceeds the candidates (mdistiller then draws with replacement); always_replace is its ImageNet rule."""
    targets = _targets()
    sampler = NegativeSampler(targets, k=k, seed=0, always_replace=always_replace)
    candidates = (targets != targets[0]).nonzero().flatten()
    counts = torch.zeros(len(targets))
    for epoch in range(200):
        row = sampler(torch.tensor([0, 1]), epoch=epoch)[0, 1:]
        assert (len(set(row.tolist())) == k) == (k <= len(candidates) and not always_replace)
        counts += torch.bincount(row, minlength=len(targets))
    assert counts[targets == targets[0]].sum() == 0
    observed = counts[candidates]
    expected = observed.sum() / len(candidates)
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    dof = len(candidates) - 1
    # without replacement the counts vary less than multinomial ones (finite-population factor)
    assert chi2 < dof + 5 * np.sqrt(2 * dof) and observed.min() > 0, chi2


def _digits_distiller(opts=()):
    torch.manual_seed(0)
    cfg = load_cfg(CFG, ["SOLVER.DEVICE", "cpu", *opts])
    return build_distiller(cfg, build_model("digits_student", 10), build_model("digits_teacher", 10))


def test_state_dict_has_mdistillers_names_and_shapes():
    distiller = _digits_distiller()
    extra = {k: tuple(v.shape) for k, v in distiller.state_dict().items() if not k.startswith(("student.", "teacher."))}
    assert list(extra.items()) == [
        ("embed_s.linear.weight", (128, 32)), ("embed_s.linear.bias", (128,)),
        ("embed_t.linear.weight", (128, 128)), ("embed_t.linear.bias", (128,)),
        ("contrast.params", (5,)), ("contrast.memory_v1", (1437, 128)), ("contrast.memory_v2", (1437, 128)),
    ]
    k, t, z1, z2, momentum = distiller.contrast.params.tolist()
    assert (k, z1, z2, momentum) == (512, -1, -1, 0.5) and t == pytest.approx(0.07)


def test_bank_rows_of_the_batch_move_with_momentum_and_the_rest_stay():
    distiller = _digits_distiller().train()
    bank_s, bank_t = distiller.contrast.memory_v1.clone(), distiller.contrast.memory_v2.clone()
    image, index = torch.randn(8, 1, 8, 8), torch.tensor([3, 30, 300, 1000, 7, 70, 700, 1400])
    feats = {}
    for name in ("embed_s", "embed_t"):
        getattr(distiller, name).register_forward_hook(lambda m, i, out, name=name: feats.__setitem__(name, out))
    distiller(image, torch.zeros(8, dtype=torch.long), epoch=1, index=index)
    for bank, before, emb in ((distiller.contrast.memory_v1, bank_s, feats["embed_s"]),
                              (distiller.contrast.memory_v2, bank_t, feats["embed_t"])):
        row = 0.5 * before[index] + 0.5 * emb.detach()
        assert torch.allclose(bank[index], row / row.norm(dim=1, keepdim=True), atol=1e-6)
        rest = torch.ones(len(bank), dtype=torch.bool)
        rest[index] = False
        assert torch.equal(bank[rest], before[rest])
    z = distiller.contrast.params[2:4].clone()
    assert (z > 0).all()  # set from the first batch, then kept
    distiller(image, torch.zeros(8, dtype=torch.long), epoch=1, index=index)
    assert torch.equal(distiller.contrast.params[2:4], z)


def test_explicit_contrastive_index_is_used():
    a, b = _digits_distiller().train(), _digits_distiller().train()
    image, target, index = torch.randn(4, 1, 8, 8), torch.arange(4), torch.arange(4)
    drawn = a.sampler(index, epoch=2)
    _, la = a(image, target, epoch=2, index=index)
    _, lb = b(image, target, epoch=5, index=index, contrastive_index=drawn)  # epoch 5 would draw others
    assert torch.equal(la["loss_feat"], lb["loss_feat"])


def test_runs_under_bf16_autocast_with_a_float32_contrast():
    distiller = _digits_distiller().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, losses = distiller(torch.randn(4, 1, 8, 8), torch.arange(4), epoch=1, index=torch.arange(4))
    assert losses["loss_feat"].dtype == torch.float32 and torch.isfinite(losses["loss_feat"])
    assert distiller.contrast.memory_v1.dtype == torch.float32


def test_crd_trainer_is_the_base_trainer(tmp_path, digits_teacher_ckpt):
    """mdistiller's peer YAMLs say SOLVER.TRAINER crd; kdlab runs CRD the same under crd and base."""
    from kdlab.engine.run import train

    runs = {}
    for trainer in ("crd", "base"):
        opts = digits_opts(str(tmp_path / trainer), epochs=1, **{"DISTILLER.TEACHER_CKPT": digits_teacher_ckpt,
                                                                 "SOLVER.TRAINER": trainer,
                                                                 "SOLVER.MAX_STEPS_PER_EPOCH": 4})
        run_dir = train(load_cfg(CFG, opts))["run_dir"]
        history = json.loads(open(os.path.join(run_dir, "metrics.json")).read())["history"][0]
        state = torch.load(os.path.join(run_dir, "latest"), weights_only=True)["model"]
        runs[trainer] = (history["train_loss"], history["test_acc"], state)
    (loss_a, acc_a, a), (loss_b, acc_b, b) = runs["crd"], runs["base"]
    assert (loss_a, acc_a) == (loss_b, acc_b)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
