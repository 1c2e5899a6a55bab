"""DistributedDataParallel under torchrun on CPU (gloo): one run directory, replicas in sync, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from kdlab.models import build_model

VANILLA = os.path.join(REPO, "configs/digits/vanilla/digits_teacher.yaml")
KD = os.path.join(REPO, "configs/digits/kd/digits_teacher_digits_student.yaml")
# GroupNorm instead of BatchNorm: per-sample normalization, so splitting a batch over ranks
# does not change the maths (SyncBatchNorm would do the same, but torch runs it on CUDA only).
COMMON = ["LOG.PROGRESS", "False", "SOLVER.DEVICE", "cpu", "DISTILLER.MODEL_KWARGS.NORM", "gn",
          "DISTILLER.STUDENT", "digits_student"]


def torchrun(nproc: int, *args: str, script: str = "tools/train.py") -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           os.path.join(REPO, script), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300, env=env)


def _weights(run_dir) -> dict:
    return torch.load(os.path.join(run_dir, "student_latest"), weights_only=True)["model"]


def _kd_opts(prefix, teacher: str) -> list[str]:
    return ["--cfg", KD, "LOG.PREFIX", str(prefix), "DISTILLER.TEACHER_CKPT", teacher, "SOLVER.EPOCHS", "2",
            "LOG.PROGRESS", "False", "SOLVER.DEVICE", "cpu", "DISTILLER.MODEL_KWARGS.NORM", "gn"]


KD_RUN = os.path.join("digits", "kd,digits_teacher,digits_student")


@pytest.fixture(scope="module")
def kd_reference(tmp_path_factory, digits_teacher_ckpt):
    """KD on 2 processes for 2 epochs of 23 steps (global batch 64), uninterrupted."""
    prefix = tmp_path_factory.mktemp("kd_ref")
    res = torchrun(2, *_kd_opts(prefix, digits_teacher_ckpt))
    assert res.returncode == 0, res.stderr[-3000:]
    return prefix, res


def test_two_processes_one_run_dir_replicas_identical(kd_reference):
    prefix, res = kd_reference
    metrics = [p for p in prefix.rglob("metrics.json")]
    assert len(metrics) == 1
    assert len([p for p in prefix.rglob("config.yaml")]) == 1
    assert "student weights identical on all 2 ranks: yes" in res.stderr
    saved = _weights(metrics[0].parent)
    assert not any(k.startswith("module.") for k in saved)
    history = json.loads(metrics[0].read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]


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


def test_stop_on_one_rank_mid_epoch_then_resume_matches_uninterrupted(tmp_path, kd_reference, digits_teacher_ckpt):
    """Rank 1 alone asks to stop after global step 25 (epoch 2 step 2). The ranks agree on it at the next
    multiple of STOP_CHECK_EVERY (20), global step 40 = epoch 2 step 17, and the checkpoint holds the
    partial sums of both ranks; a resumed run ends with the uninterrupted run's weights and metrics."""
    from kdlab.engine.trainer import STOP_CHECK_EVERY

    assert STOP_CHECK_EVERY == 20  # the steps below follow from it
    stopped = torchrun(2, "25", *_kd_opts(tmp_path, digits_teacher_ckpt), script="tests/train_stop_on_rank1.py")
    assert stopped.returncode != 0 and "interrupted at epoch 2 step 17" in stopped.stderr, stopped.stderr[-3000:]
    state = torch.load(tmp_path / KD_RUN / "latest", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 17, 40)
    assert state["partial"]["sums"][2] == 17 * 64  # images of both ranks (32 per rank and step)
    resumed = torchrun(2, *_kd_opts(tmp_path, digits_teacher_ckpt), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "student weights identical on all 2 ranks: yes" in resumed.stderr
    ref_dir = kd_reference[0] / KD_RUN
    a, b = _weights(ref_dir), _weights(tmp_path / KD_RUN)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ref_hist = json.loads((ref_dir / "metrics.json").read_text())["history"]
    hist = json.loads((tmp_path / KD_RUN / "metrics.json").read_text())["history"]
    for h, r in zip(hist, ref_hist, strict=True):
        assert h["train_acc"] == r["train_acc"] and h["test_acc"] == r["test_acc"]
        assert h["train_loss"] == pytest.approx(r["train_loss"], rel=1e-12)  # sums added in another order


@pytest.mark.parametrize("bad", [["SOLVER.BATCH_SIZE", "63"]])
def test_failure_on_ranks_exits_with_the_error(tmp_path, bad):
    res = torchrun(2, "--cfg", VANILLA, "LOG.PREFIX", str(tmp_path), "SOLVER.EPOCHS", "1", *COMMON, *bad)
    assert res.returncode != 0
    assert "must be divisible by the number of processes" in res.stderr


CRD = os.path.join(REPO, "configs/digits/crd/digits_teacher_digits_student.yaml")


def test_crd_memory_bank_is_the_same_on_every_rank(tmp_path):
    """CRD under torchrun: each rank updates its bank with the indices and embeddings of all ranks (gathered),
    and DDP does not broadcast it, so after an epoch (23 steps, 32 images per rank and step) both ranks hold
    the same bank, and every row, not only those of the rank's own half of the data, has been updated."""
    torch.manual_seed(0)
    teacher = str(tmp_path / "teacher.pth")
    model = build_model("digits_teacher", 10, in_channels=1)
    torch.save({"format": "kdlab-student", "model": model.state_dict(), "arch": "digits_teacher",
                "num_classes": 10, "epoch": 0}, teacher)
    res = torchrun(2, str(tmp_path), "--cfg", CRD, "LOG.PREFIX", str(tmp_path / "logs"), "SOLVER.EPOCHS", "1",
                   "DISTILLER.TEACHER_CKPT", teacher, "LOG.PROGRESS", "False", "SOLVER.DEVICE", "cpu",
                   "DISTILLER.MODEL_KWARGS.NORM", "gn",  # BatchNorm statistics would differ between ranks
                   script="tests/train_dump_buffers.py")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "student weights identical on all 2 ranks: yes" in res.stderr  # parameters and buffers
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for key in ("contrast.memory_v1", "contrast.memory_v2", "contrast.params"):
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    assert (ranks[0]["contrast.params"][2:4] > 0).all()  # Z set (the mean over both ranks' first batches)
    for key in ("contrast.memory_v1", "contrast.memory_v2"):
        norms = ranks[0][key].norm(dim=1)  # an updated row is renormalized; the random initial ones are not
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5), key
