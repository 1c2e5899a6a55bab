"""LR schedules (multistep, cosine, plateau; linear warm-up) and early stopping, alone and inside the Trainer."""

from __future__ import annotations

import math
import os

import pytest
from conftest import REPO, digits_opts

from kdlab.config import get_cfg, load_cfg
from kdlab.engine.optim import build_scheduler
from kdlab.engine.trainer import Trainer

DIGITS = os.path.join(REPO, "configs/digits/vanilla/digits_teacher.yaml")


def solver_cfg(**solver):
    cfg = get_cfg()
    for key, value in solver.items():
        cfg.SOLVER[key] = value
    return cfg


def lrs(schedule, epochs: int) -> list[float]:
    return [schedule.lr(e) for e in range(1, epochs + 1)]


def test_multistep_decays_after_each_stage():
    s = build_scheduler(solver_cfg(SCHEDULER="multistep", LR=0.1, LR_DECAY_STAGES=[2, 4], LR_DECAY_RATE=0.1, EPOCHS=6))
    assert lrs(s, 6) == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_multistep_with_linear_warmup():
    s = build_scheduler(solver_cfg(SCHEDULER="multistep", LR=0.1, LR_DECAY_STAGES=[4], EPOCHS=6,
                                   WARMUP_EPOCHS=3, WARMUP_FACTOR=0.1))
    # warm-up from 0.1 * LR, linear over 3 epochs: 0.01, 0.04, 0.07; then the schedule itself
    assert lrs(s, 6) == pytest.approx([0.01, 0.04, 0.07, 0.1, 0.01, 0.01])


def test_cosine_with_warmup_and_floor():
    s = build_scheduler(solver_cfg(SCHEDULER="cosine", LR=1.0, MIN_LR=0.0, EPOCHS=5, WARMUP_EPOCHS=1,
                                   WARMUP_FACTOR=0.1))
    half_cos = [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert lrs(s, 5) == pytest.approx([0.1, *half_cos])
    assert half_cos == pytest.approx([1.0, 0.853553, 0.5, 0.146447], abs=1e-6)
    floor = build_scheduler(solver_cfg(SCHEDULER="cosine", LR=1.0, MIN_LR=0.2, EPOCHS=3))
    assert lrs(floor, 3) == pytest.approx([1.0, 0.2 + 0.8 * 0.75, 0.2 + 0.8 * 0.25])


def run_plateau(s, values: list[float], key: str) -> list[float]:
    """LR of epochs 1..len(values)+1, feeding each epoch's metric after it (as the Trainer does)."""
    out = []
    for epoch, value in enumerate(values, start=1):
        out.append(s.lr(epoch))
        s.observe({key: value})
    out.append(s.lr(len(values) + 1))
    return out


def test_plateau_on_test_acc_reduces_after_patience():
    s = build_scheduler(solver_cfg(SCHEDULER="plateau", LR=0.1, PLATEAU_PATIENCE=2, PLATEAU_FACTOR=0.1,
                                   PLATEAU_METRIC="test_acc"))
    # best 60 at epoch 2; epochs 3, 4, 5 are not better -> more than 2 bad epochs -> LR x0.1 from epoch 6
    got = run_plateau(s, [50, 60, 55, 60, 59, 70, 65], "test_acc")
    assert got == pytest.approx([0.1] * 5 + [0.01] * 3)


def test_plateau_on_test_loss_minimizes_and_round_trips_its_state():
    cfg = solver_cfg(SCHEDULER="plateau", LR=1.0, PLATEAU_PATIENCE=1, PLATEAU_FACTOR=0.5, PLATEAU_METRIC="test_loss")
    s = build_scheduler(cfg)
    got = run_plateau(s, [2.0, 1.0, 1.5, 1.2, 0.9, 1.0, 1.1, 1.3, 1.4], "test_loss")
    # bad epochs 3, 4 -> x0.5 from epoch 5; 0.9 is a new best; bad 6, 7 -> x0.5 from 8; bad 8, 9 -> x0.5 from 10
    assert got == pytest.approx([1.0] * 4 + [0.5] * 3 + [0.25] * 2 + [0.125])
    restored = build_scheduler(cfg)
    restored.load_state_dict(s.state_dict())
    assert restored.lr(11) == s.lr(11) and restored.state_dict() == s.state_dict()


def test_plateau_warmup_ramps_first():
    s = build_scheduler(solver_cfg(SCHEDULER="plateau", LR=0.2, WARMUP_EPOCHS=2, WARMUP_FACTOR=0.5,
                                   PLATEAU_PATIENCE=0))
    got = run_plateau(s, [10, 20, 15], "test_acc")
    assert got == pytest.approx([0.1, 0.15, 0.2, 0.02])


# ---------------------------------------------------------------- inside the Trainer (tiny digits runs)
def scripted_accuracy(monkeypatch, accuracies: list[float]) -> list[int]:
    """Make the Trainer's evaluation report `accuracies` in turn as test_acc (after really evaluating)."""
    calls = []
    real = Trainer.evaluate

    def evaluate(self):
        out = real(self)
        out["test_acc"] = accuracies[len(calls)]
        calls.append(1)
        return out

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    return calls


def digits_cfg(prefix, epochs: int, **extra):
    opts = digits_opts(str(prefix), epochs=epochs, **{"DISTILLER.STUDENT": "digits_student", "SOLVER.BATCH_SIZE": 512,
                                                      **extra})
    return load_cfg(DIGITS, opts)


def test_digits_run_follows_warmup_and_plateau_and_stops_early(tmp_path, monkeypatch):
    from kdlab.engine.run import train

    calls = scripted_accuracy(monkeypatch, [40.0, 50.0, 50.0, 49.0, 60.0, 70.0])
    summary = train(digits_cfg(tmp_path, epochs=6, **{"SOLVER.SCHEDULER": "plateau", "SOLVER.LR": 0.1,
                                                      "SOLVER.WARMUP_EPOCHS": 1, "SOLVER.PLATEAU_PATIENCE": 0,
                                                      "SOLVER.PLATEAU_FACTOR": 0.1, "SOLVER.EARLY_STOP_PATIENCE": 2}))
    # best at epoch 2; epochs 3 (a tie is not better) and 4 are not better -> 2 bad epochs -> stop before epoch 5
    assert len(calls) == 4 and summary["last_epoch"] == 4 and len(summary["history"]) == 4
    assert (summary["best_epoch"], summary["best_acc"], summary["last_acc"]) == (2, 50.0, 49.0)
    # epoch 1 warms up at 0.1 * LR; the plateau after epoch 3 (patience 0) cuts the LR of epoch 4
    assert [r["lr"] for r in summary["history"]] == pytest.approx([0.01, 0.1, 0.1, 0.01])
    assert [r["test_acc"] for r in summary["history"]] == [40.0, 50.0, 50.0, 49.0]
