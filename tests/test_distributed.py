"""DistributedDataParallel under torchrun on CPU (gloo): one run directory, replicas in sync, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO

VANILLA = os.path.join(REPO, "configs/digits/vanilla/digits_teacher.yaml")
KD = os.path.join(REPO, "configs/digits/kd/digits_teacher_digits_student.yaml")
# GroupNorm instead of BatchNorm: per-sample normalization, so splitting a batch over ranks
# does not change the maths (SyncBatchNorm would do the same, but torch runs it on CUDA only).
COMMON = ["LOG.PROGRESS", "False", "SOLVER.DEVICE", "cpu", "DISTILLER.MODEL_KWARGS.NORM", "gn",
          "DISTILLER.STUDENT", "digits_student"]


def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           os.path.join(REPO, "tools/train.py"), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300, env=env)


def _weights(run_dir) -> dict:
    return torch.load(os.path.join(run_dir, "student_latest"), weights_only=True)["model"]


def test_two_processes_one_run_dir_replicas_identical(tmp_path):
    res = torchrun(2, "--cfg", VANILLA, "LOG.PREFIX", str(tmp_path), "SOLVER.EPOCHS", "1", *COMMON)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = [p for p in tmp_path.rglob("metrics.json")]
    assert len(metrics) == 1
    assert len([p for p in tmp_path.rglob("config.yaml")]) == 1
    assert "student weights identical on all 2 ranks: yes" in res.stderr
    saved = _weights(metrics[0].parent)
    assert not any(k.startswith("module.") for k in saved)
    history = json.loads(metrics[0].read_text())["history"]
    assert len(history) == 1


def test_two_processes_match_one_process(tmp_path):
    """Same global batch (64) and seed: rank r takes samples r, r+2, ... of each global batch, so after
    22 full steps both runs have seen the same images. The epoch's 23rd (last, partial) batch is left
    out: DistributedSampler-style padding repeats one sample there (1437 -> 1438)."""
    opts = ["SOLVER.EPOCHS", "1", "SOLVER.MAX_STEPS_PER_EPOCH", "22", "SOLVER.BATCH_SIZE", "64", *COMMON]
    one = torchrun(1, "--cfg", VANILLA, "LOG.PREFIX", str(tmp_path / "one"), *opts)
    two = torchrun(2, "--cfg", VANILLA, "LOG.PREFIX", str(tmp_path / "two"), *opts)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr[-2000:], two.stderr[-2000:])
    a = _weights(tmp_path / "one" / "digits" / "digits_teacher")
    b = _weights(tmp_path / "two" / "digits" / "digits_teacher")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    ma = json.loads((tmp_path / "one/digits/digits_teacher/metrics.json").read_text())["history"][0]
    mb = json.loads((tmp_path / "two/digits/digits_teacher/metrics.json").read_text())["history"][0]
    assert abs(ma["train_loss"] - mb["train_loss"]) < 1e-4
    assert abs(ma["test_acc"] - mb["test_acc"]) <= 100.0 / 360 + 1e-9  # at most one test image flips


def test_kd_under_torchrun_and_resume(tmp_path, digits_teacher_ckpt):
    opts = ["--cfg", KD, "LOG.PREFIX", str(tmp_path), "DISTILLER.TEACHER_CKPT", digits_teacher_ckpt,
            "LOG.PROGRESS", "False", "SOLVER.DEVICE", "cpu", "DISTILLER.MODEL_KWARGS.NORM", "gn"]
    first = torchrun(2, *opts, "SOLVER.EPOCHS", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = tmp_path / "digits" / "kd,digits_teacher,digits_student"
    epoch1 = json.loads((run_dir / "metrics.json").read_text())["history"][0]
    resumed = torchrun(2, *opts, "SOLVER.EPOCHS", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2] and history[0] == epoch1
    assert "student weights identical on all 2 ranks: yes" in resumed.stderr


@pytest.mark.parametrize("bad", [["SOLVER.BATCH_SIZE", "63"]])
def test_failure_on_ranks_exits_with_the_error(tmp_path, bad):
    res = torchrun(2, "--cfg", VANILLA, "LOG.PREFIX", str(tmp_path), "SOLVER.EPOCHS", "1", *COMMON, *bad)
    assert res.returncode != 0
    assert "must be divisible by the number of processes" in res.stderr
