"""Exact resume: a run stopped at an epoch boundary or mid-epoch and resumed ends bit-identical."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import REPO, digits_opts

from kdlab.config import load_cfg
from kdlab.engine import trainer as trainer_mod
from kdlab.engine.run import train
from kdlab.engine.trainer import TrainingInterrupted

CFG = os.path.join(REPO, "configs/digits/vanilla/digits_teacher.yaml")
# A student with dropout and augmentation, so that every RNG stream matters.
EXTRA = {"DISTILLER.STUDENT": "digits_student", "DISTILLER.MODEL_KWARGS.DROPOUT": 0.3, "DATASET.AUGMENT": True,
         "SOLVER.SCHEDULER": "multistep", "SOLVER.LR_DECAY_STAGES": "[2]", "SOLVER.TYPE": "SGD"}


def _cfg(prefix: str, epochs: int = 3):
    return load_cfg(CFG, digits_opts(prefix, epochs=epochs, **EXTRA))


def _student(run_dir: str) -> dict:
    return torch.load(os.path.join(run_dir, "student_latest"), weights_only=True)["model"]


def _history(run_dir: str) -> list:
    hist = json.load(open(os.path.join(run_dir, "metrics.json")))["history"]
    return [{k: v for k, v in h.items() if k != "time_s"} for h in hist]


class _Killed(Exception):
    pass


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    summary = train(_cfg(str(tmp_path_factory.mktemp("ref"))))
    return summary["run_dir"]


def _assert_identical(run_dir: str, reference: str) -> None:
    a, b = _student(run_dir), _student(reference)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _history(run_dir) == _history(reference)


def test_resume_after_kill_at_epoch_boundary(tmp_path, monkeypatch, reference_run):
    original = trainer_mod.RunLogger.write_metrics

    def die_after_epoch_2(self, summary):
        original(self, summary)
        if summary["last_epoch"] == 2:
            raise _Killed

    monkeypatch.setattr(trainer_mod.RunLogger, "write_metrics", die_after_epoch_2)
    with pytest.raises(_Killed):
        train(_cfg(str(tmp_path)))
    monkeypatch.setattr(trainer_mod.RunLogger, "write_metrics", original)
    summary = train(_cfg(str(tmp_path)), resume=True)
    _assert_identical(summary["run_dir"], reference_run)


def test_resume_after_interrupt_mid_epoch(tmp_path, monkeypatch, reference_run):
    original = trainer_mod.Trainer.train_step

    def stop_at_step_30(self, batch, epoch, step, sums):
        out = original(self, batch, epoch, step, sums)
        if self.global_step == 30:  # the 31st step: epoch 2, 8 of 23 steps done
            self.stop_requested = True
        return out

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", stop_at_step_30)
    with pytest.raises(TrainingInterrupted):
        train(_cfg(str(tmp_path)))
    monkeypatch.setattr(trainer_mod.Trainer, "train_step", original)
    state = torch.load(os.path.join(tmp_path, "digits", "digits_teacher", "latest"), weights_only=True)
    assert (state["epoch"], state["step_in_epoch"]) == (1, 8)
    summary = train(_cfg(str(tmp_path)), resume=True)
    _assert_identical(summary["run_dir"], reference_run)


def test_resume_without_checkpoint_is_an_error(tmp_path):
    from kdlab.errors import ConfigError

    with pytest.raises(ConfigError, match="--resume: no checkpoint"):
        train(_cfg(str(tmp_path)), resume=True)


def test_new_run_never_overwrites_previous(tmp_path):
    first = train(_cfg(str(tmp_path), epochs=1))["run_dir"]
    before = _student(first)
    second = train(_cfg(str(tmp_path), epochs=1))["run_dir"]
    assert second == first
    moved = first + "-1"
    assert os.path.isfile(os.path.join(moved, "student_latest"))
    for k, v in _student(moved).items():
        assert torch.equal(v, before[k])


def test_resume_with_a_different_config_is_refused_before_anything_is_touched(tmp_path):
    from kdlab.errors import ConfigError

    run_dir = train(_cfg(str(tmp_path), epochs=1))["run_dir"]
    before = {f: os.path.getmtime(os.path.join(run_dir, f)) for f in os.listdir(run_dir)}
    bad = load_cfg(CFG, digits_opts(str(tmp_path), epochs=2, **{**EXTRA, "SOLVER.LR": 0.5}))
    with pytest.raises(ConfigError, match=r"--resume: SOLVER\.LR is 0\.5 but the run was started with 0\.05"):
        train(bad, resume=True)
    assert {f: os.path.getmtime(os.path.join(run_dir, f)) for f in os.listdir(run_dir)} == before


def test_resume_neutral_keys_and_auto_may_differ():
    from kdlab.config import get_cfg
    from kdlab.engine.run import check_resume_config

    saved = get_cfg()
    saved.SOLVER.AMP, saved.SOLVER.CHANNELS_LAST = True, False  # what a run resolved "auto" to
    new = get_cfg()
    new.SOLVER.AMP = new.SOLVER.CHANNELS_LAST = "auto"
    new.LOG.TENSORBOARD_FREQ, new.DATASET.NUM_WORKERS, new.SOLVER.EPOCHS, new.SOLVER.DEVICE = 7, 0, 300, "cpu"
    check_resume_config(new, saved.dump(), "latest")
    new.SOLVER.AMP = False
    from kdlab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"SOLVER\.AMP is False but the run was started with True"):
        check_resume_config(new, saved.dump(), "latest")


CRD_CFG = os.path.join(REPO, "configs/digits/crd/digits_teacher_digits_student.yaml")


@pytest.fixture(scope="module")
def crd_teacher(tmp_path_factory) -> str:
    """An untrained digits teacher saved as a kdlab student file (exactness needs no trained teacher)."""
    from kdlab.models import build_model

    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("crd_teacher") / "teacher.pth")
    torch.save({"format": "kdlab-student", "model": build_model("digits_teacher", 10, in_channels=1).state_dict(),
                "arch": "digits_teacher", "num_classes": 10, "epoch": 0}, path)
    return path


def _crd_cfg(prefix: str, teacher: str):
    return load_cfg(CRD_CFG, digits_opts(prefix, epochs=3, **{"DISTILLER.TEACHER_CKPT": teacher,
                                                              "DATASET.AUGMENT": True}))


def _distiller_state(run_dir: str) -> dict:
    return torch.load(os.path.join(run_dir, "latest"), weights_only=True)["model"]


def test_crd_resume_after_an_epoch_matches_uninterrupted(tmp_path, monkeypatch, crd_teacher):
    """CRD's memory bank and normalization constants are buffers: `latest` holds them, --resume restores them,
    and the negatives are drawn from (SEED, epoch, batch indices), so the resumed run ends bit-identical,
    bank and embedding heads included."""
    reference = train(_crd_cfg(str(tmp_path / "ref"), crd_teacher))["run_dir"]
    original = trainer_mod.RunLogger.write_metrics

    def die_after_epoch_1(self, summary):
        original(self, summary)
        if summary["last_epoch"] == 1:
            raise _Killed

    monkeypatch.setattr(trainer_mod.RunLogger, "write_metrics", die_after_epoch_1)
    with pytest.raises(_Killed):
        train(_crd_cfg(str(tmp_path / "run"), crd_teacher))
    monkeypatch.setattr(trainer_mod.RunLogger, "write_metrics", original)
    stopped = _distiller_state(os.path.join(tmp_path, "run", "digits", "crd,digits_teacher,digits_student"))
    summary = train(_crd_cfg(str(tmp_path / "run"), crd_teacher), resume=True)
    _assert_identical(summary["run_dir"], reference)
    a, b = _distiller_state(summary["run_dir"]), _distiller_state(reference)
    assert a.keys() == b.keys() and {"contrast.memory_v1", "contrast.memory_v2", "contrast.params"} <= a.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(stopped["contrast.memory_v1"], a["contrast.memory_v1"])  # epochs 2-3 moved the bank
    assert (a["contrast.params"][2:4] > 0).all()  # Z was set in epoch 1 and kept
