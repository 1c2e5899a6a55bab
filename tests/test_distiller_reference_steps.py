"""kdlab's distillers take the same training steps as the reference code's.

tests/reference/step_refs.json holds, per case, what the reference distiller (mdistiller's or
the logit-standardization-KD repository's, configured by a peer YAML file and, for *_ls cases,
--logit-stand) did in three SGD steps (*_dot cases: mdistiller's DOT trainer's steps) from seeded
weights on seeded batches: each step's losses and a digest of the student's (and the method's
connectors', ABFs', regressors', log-scales') weights afterwards. It was made once by
tests/reference/make_step_refs.py; the helpers (weights, batches, digests) are imported from it,
so both sides start from the same numbers. Both sides run in float64 (refs.DTYPE): in float32,
steps from random weights are chaotic enough that the order of a reduction (which differs between
CPUs and thread counts) moves the weights by ~1e-5; in float64 the two implementations agree to
~1e-12 (seen on this project's CPUs), so the tolerance is 1e-10 relative.
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
from kdlab.engine import dot
from kdlab.engine.optim import build_optimizer, build_scheduler, set_lr
from kdlab.models import build_model

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "reference"))
import make_step_refs as refs  # noqa: E402

REFS = json.loads((REPO / "tests" / "reference" / "step_refs.json").read_text())
CASES = sorted(REFS["cases"])
REL = 1e-10  # losses, weight sums and norms after the steps
DELTA_REL = 1e-8  # ||w_after - w_before||: a difference of two close numbers, so fewer exact digits
# KDSVD takes its SVD in float32 on both sides (mdistiller casts with .float()); LAPACK's float32 SVD
# moves in the last bits with the thread count and the CPU, so its case is held to float32 precision.
FLOAT32_REL = {"kdsvd": 1e-5}
MODEL_OPTS = {"DISTILLER": {"TEACHER": REFS["teacher"], "STUDENT": REFS["student"]}, "SOLVER": {"DEVICE": "cpu"}}


def _lookup(cfg, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return list(cfg) if isinstance(cfg, (list, tuple)) else cfg


def stored_cfg(case: str):
    """kdlab's config holding the values the reference resolved (no peer file needed)."""
    ref = REFS["cases"][case]
    cfg = get_cfg()
    merge_dict(cfg, unflatten(ref["config"]))
    merge_dict(cfg, MODEL_OPTS)
    merge_dict(cfg, unflatten(refs.KDLAB_OPTS.get(case, {})))
    cfg.EXPERIMENT.LOGIT_STAND = ref["logit_stand"]
    cfg.freeze()
    return cfg


@pytest.mark.parametrize("case", CASES)
def test_peer_yaml_resolves_like_the_reference(case, peer_config_dir):
    """kdlab.load_cfg reads the same peer YAML (and --logit-stand) into the values the reference used."""
    ref = REFS["cases"][case]
    peer = Path(peer_config_dir) / ref["peer_config"]
    assert peer.is_file(), f"{ref['peer_config']} is not in tests/reference/peer_configs.json"
    opts = ["DISTILLER.TEACHER", REFS["teacher"], "DISTILLER.STUDENT", REFS["student"], *refs.case_opts(case)]
    cfg = load_cfg(str(peer), opts, logit_stand=ref["logit_stand"])
    assert cfg.EXPERIMENT.LOGIT_STAND == ref["logit_stand"]
    for key, value in ref["config"].items():
        assert _lookup(cfg, key) == value, key


def _close(actual: float, expected: float, rel: float, scale: float | None = None) -> bool:
    return abs(actual - expected) <= rel * (scale if scale is not None else abs(expected)) + 1e-12


@pytest.mark.parametrize("case", CASES)
def test_steps_match_reference(case):
    ref = REFS["cases"][case]
    rel = FLOAT32_REL.get(case, REL)
    delta_rel = FLOAT32_REL.get(case, DELTA_REL)
    cfg = stored_cfg(case)
    torch.manual_seed(0)
    student = build_model(REFS["student"], REFS["num_classes"])
    teacher = build_model(REFS["teacher"], REFS["num_classes"])
    refs.load_seeded(teacher, "teacher.")  # as the reference: OFD's margins come from the teacher's BatchNorms
    facts = DatasetFacts(num_classes=REFS["num_classes"], input_size=(refs.SIZE, refs.SIZE), in_channels=3,
                         num_train=refs.NUM_DATA, train_targets=refs.train_targets())
    distiller = build_distiller(cfg, student, teacher, facts=facts).to(refs.DTYPE)
    refs.seed_trained(distiller, case)
    modules = refs.trained_modules(distiller, case)
    before = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in modules.items()}
    distiller.train()
    optimizer = build_optimizer(distiller.learnable_parameters(), cfg)
    schedule = build_scheduler(cfg)
    for step, epoch in enumerate(REFS["step_epochs"]):
        set_lr(optimizer, schedule.lr(epoch))
        image, target = refs.step_batch(step, distiller.two_views)
        extras = {"index": torch.arange(len(target)), **refs.step_extras(case, step, epoch, cfg)}
        _, losses = distiller(image, target, epoch=epoch, **extras)
        expected = ref["losses"][step]
        assert sorted(losses) == sorted(expected), f"step {step}"
        for name, value in losses.items():
            assert _close(value.item(), expected[name], rel), f"step {step} {name}: {value.item()} vs {expected[name]}"
        if cfg.SOLVER.TRAINER == "dot":  # the Trainer's DOT update (AMP off: a disabled GradScaler)
            dot.backward_and_step(optimizer, losses, torch.amp.GradScaler("cpu", enabled=False))
        else:
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
    for name, module in modules.items():
        after = module.state_dict()
        got, want = refs.digest(after), ref["digest"][name]
        assert sorted(got) == sorted(want), name
        for key, (w_sum, w_norm) in want.items():
            g_sum, g_norm = got[key]
            assert _close(g_norm, w_norm, rel), f"{name}.{key} norm {g_norm} vs {w_norm}"
            assert _close(g_sum, w_sum, rel, scale=abs(w_sum) + w_norm), f"{name}.{key} sum {g_sum} vs {w_sum}"
        deltas = refs.delta_norms(before[name], after)
        for key, want_delta in ref["delta_norms"][name].items():
            # An update near zero (a conv bias followed by BatchNorm gets no gradient) is only known
            # to the weights' own precision, REL * ||w||.
            tolerance = delta_rel * want_delta + rel * got[key][1]
            assert abs(deltas[key] - want_delta) <= tolerance, f"{name}.{key} update norm {deltas[key]} vs {want_delta}"
