"""kdlab's CTKD and CTKD_DKD take the same training steps as CTKD's own training loop, in float64.

tests/reference/ctkd_refs.json holds, per case (a train_student.py command line of CTKD's or of the
logit-standardization-KD repository's CTKD scripts), what helper/loops.py's train_distill did in three
SGD steps at epochs 1, 5 and 12 (lambda -0.024, -0.5, -1 on the cosine schedule) from seeded weights on
seeded batches: the lambda and temperature of each step, its losses, the learned global_T and a digest
of the student's weights afterwards. It was made by tests/reference/make_ctkd_refs.py, whose helpers
(weights, batches, digests, shared with make_step_refs.py) are imported here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import unflatten

from kdlab.config import get_cfg, load_cfg
from kdlab.config.load import merge_dict
from kdlab.distillers import DatasetFacts, build_distiller
from kdlab.engine.optim import build_optimizer, build_scheduler, set_lr
from kdlab.models import build_model

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "reference"))
import make_step_refs as refs  # noqa: E402

REFS = json.loads((REPO / "tests" / "reference" / "ctkd_refs.json").read_text())
CASES = sorted(REFS["cases"])
REL, DELTA_REL = 1e-10, 1e-8  # as test_distiller_reference_steps.py


def _close(actual: float, expected: float, rel: float, scale: float | None = None) -> bool:
    return abs(actual - expected) <= rel * (scale if scale is not None else abs(expected)) + 1e-12


def stored_cfg(case: str):
    ref = REFS["cases"][case]
    cfg = get_cfg()
    merge_dict(cfg, unflatten(ref["config"]))
    merge_dict(cfg, {"DISTILLER": {"TEACHER": REFS["teacher"], "STUDENT": REFS["student"]}})
    cfg.EXPERIMENT.LOGIT_STAND = ref["logit_stand"]
    cfg.freeze()
    return cfg


@pytest.mark.parametrize("case", CASES)
def test_steps_match_ctkd_reference(case):
    ref = REFS["cases"][case]
    cfg = stored_cfg(case)
    torch.manual_seed(0)
    student = build_model(REFS["student"], REFS["num_classes"])
    teacher = build_model(REFS["teacher"], REFS["num_classes"])
    facts = DatasetFacts(num_classes=REFS["num_classes"])
    distiller = build_distiller(cfg, student, teacher, facts=facts).to(refs.DTYPE)
    refs.load_seeded(distiller.teacher, "teacher.")
    refs.load_seeded(distiller.student, "student.")
    before = {k: v.clone() for k, v in distiller.student.state_dict().items()}
    distiller.train()
    params = distiller.learnable_parameters()
    assert params[-1] is distiller.temp_module.global_T  # the reference's SGD over [student, Global_T]
    optimizer = build_optimizer(params, cfg)
    schedule = build_scheduler(cfg)
    for step, epoch in enumerate(REFS["step_epochs"]):
        expected = ref["steps"][step]
        assert distiller.lambda_at(epoch) == pytest.approx(expected["lambda"], rel=1e-15, abs=1e-15)
        set_lr(optimizer, schedule.lr(epoch))
        image, target = refs.step_batch(step)
        _, losses = distiller(image, target, epoch=epoch)
        assert _close(distiller.last_temperature.item(), expected["temperature"], REL), f"step {step} temperature"
        assert sorted(losses) == sorted(expected["losses"]), f"step {step}"
        for name, value in losses.items():
            want = expected["losses"][name]
            assert _close(value.item(), want, REL), f"step {step} {name}: {value.item()} vs {want}"
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert _close(distiller.temp_module.global_T.item(), ref["global_T"], REL)
    after = distiller.student.state_dict()
    got = refs.digest(after)
    assert sorted(got) == sorted(ref["digest"])
    for key, (w_sum, w_norm) in ref["digest"].items():
        g_sum, g_norm = got[key]
        assert _close(g_norm, w_norm, REL), f"{key} norm {g_norm} vs {w_norm}"
        assert _close(g_sum, w_sum, REL, scale=abs(w_sum) + w_norm), f"{key} sum {g_sum} vs {w_sum}"
    deltas = refs.delta_norms(before, after)
    for key, want in ref["delta_norms"].items():
        assert abs(deltas[key] - want) <= DELTA_REL * want + REL * got[key][1], f"{key} update {deltas[key]} vs {want}"


def test_shipped_configs_resolve_to_the_reference_options():
    """configs/cifar100/ctkd/*.yaml hold CTKD's script values; --logit-stand gives the LS script's."""
    plain = REFS["cases"]["ctkd"]["config"]
    for path in sorted((REPO / "configs" / "cifar100" / "ctkd").glob("*.yaml")):
        for logit_stand, want in ((False, plain), (True, REFS["cases"]["ctkd_ls"]["config"])):
            cfg = load_cfg(str(path), logit_stand=logit_stand, base_temp=2.0, kd_weight=9.0)
            for key, value in want.items():
                node = cfg
                for part in key.split("."):
                    node = node[part]
                assert (list(node) if isinstance(node, (list, tuple)) else node) == value, (path.name, key)
            assert cfg.EXPERIMENT.LOGIT_STAND is logit_stand
    cfg = load_cfg(str(REPO / "configs" / "cifar100" / "ctkd_dkd" / "resnet56_resnet20.yaml"))
    for key, value in REFS["cases"]["ctkd_dkd"]["config"].items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert (list(node) if isinstance(node, (list, tuple)) else node) == value, key
