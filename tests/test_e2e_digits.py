"""End to end on digits through the command-line tools: teacher -> KD + LS student -> eval --json.

A pipeline (smoke) test: it checks that the tools, files and reports agree with each other, not that
KD or LS help (a vanilla digits student reaches 98 %): that is in test_distiller_terms.py. Training
runs in a real process (tools/train.py), evaluation in this one (test_cli.call_tool).
"""

from __future__ import annotations

import json
import os

import torch
from conftest import REPO
from test_cli import call_tool, run_tool

KD_CFG = os.path.join(REPO, "configs/digits/kd/digits_teacher_digits_student.yaml")
EPOCHS = 6  # seeds 0-2 with an 8-epoch teacher: 95.8-97.2 % (8 epochs before; 4 gave 93.6-96.1 %)


def test_kd_logit_stand_student_trains_and_evaluates(tmp_path, digits_teacher_ckpt):
    common = ["LOG.PREFIX", str(tmp_path), "SOLVER.EPOCHS", str(EPOCHS), "LOG.PROGRESS", "False"]
    res = run_tool("train.py", "--cfg", KD_CFG, "--logit-stand", "DISTILLER.TEACHER_CKPT", digits_teacher_ckpt,
                   "EXPERIMENT.NAME", "kd_ls", *common)
    assert res.returncode == 0, res.stderr[-2000:]
    run_dir = tmp_path / "digits" / "kd_ls"
    assert "logit standardization ON" in (run_dir / "config.yaml").read_text().splitlines()[0]
    assert "logit standardization ON" in (run_dir / "worklog.txt").read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["logit_stand"] is True and len(metrics["history"]) == EPOCHS
    assert metrics["input_size"] == [8, 8] and metrics["in_channels"] == 1
    from kdlab.evaluation.model_info import model_info
    from kdlab.models import build_model

    assert metrics["student_macs"] == model_info(build_model("digits_student", 10, in_channels=1), 8, 1,
                                                 latency_runs=0)["macs"]
    assert metrics["best_acc"] == max(h["test_acc"] for h in metrics["history"])
    assert metrics["last_acc"] == metrics["history"][-1]["test_acc"]
    for name in ("latest", "best", "student_best", "student_latest"):
        assert (run_dir / name).is_file()
    assert (run_dir / "tensorboard").is_dir() and any((run_dir / "tensorboard").iterdir())

    res = call_tool("eval.py", "--cfg", KD_CFG, "--ckpt", str(run_dir / "student_latest"), "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout)
    assert report["top1"] >= 90.0, report["top1"]  # smoke: chance is 10 %, vanilla reaches 98 %
    assert report["top1"] == metrics["last_acc"]
    assert report["top5"] >= report["top1"]
    cm = torch.tensor(report["confusion_matrix"])
    assert cm.sum().item() == report["num_samples"] == 360
    assert abs(100.0 * cm.diag().sum().item() / 360 - report["top1"]) < 1e-9
    assert len(report["per_class_acc"]) == 10


def test_teacher_checkpoint_is_loaded_frozen(digits_teacher_ckpt, tmp_path):
    from kdlab.config import load_cfg
    from kdlab.engine.builder import build_everything

    cfg = load_cfg(KD_CFG, ["DISTILLER.TEACHER_CKPT", digits_teacher_ckpt, "LOG.PREFIX", str(tmp_path)])
    _, distiller = build_everything(cfg)
    saved = torch.load(digits_teacher_ckpt, weights_only=True)["model"]
    for k, v in distiller.teacher.state_dict().items():
        assert torch.equal(v, saved[k])
    distiller.train()
    assert not distiller.teacher.training
    assert all(not p.requires_grad for p in distiller.teacher.parameters())
    assert {id(p) for p in distiller.learnable_parameters()} == {id(p) for p in distiller.student.parameters()}
