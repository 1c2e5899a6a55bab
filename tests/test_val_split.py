"""DATASET.VAL_SPLIT: a stratified held-out part of the training set selects; the test set is reported apart."""

from __future__ import annotations

import json
import math
import os
from collections import Counter

import pytest
import torch
from conftest import REPO

from kdlab.config import load_cfg
from kdlab.data import build_dataloaders, build_datasets
from kdlab.engine.run import train
from kdlab.errors import ConfigError

TEACHER = os.path.join(REPO, "configs/digits/vanilla/digits_teacher.yaml")


def _digits(*opts):
    return load_cfg(TEACHER, ["DATASET.NUM_WORKERS", "0", *opts])


def test_held_out_split_is_stratified_disjoint_and_the_same_for_every_seed():
    full = build_datasets(_digits())
    splits = build_datasets(_digits("DATASET.VAL_SPLIT", "0.2"))
    other_seed = build_datasets(_digits("DATASET.VAL_SPLIT", "0.2", "EXPERIMENT.SEED", "7"))
    train_idx, held_idx = splits.train.indices, splits.val.indices
    assert splits.val.indices == other_seed.val.indices
    assert not set(train_idx) & set(held_idx) and len(train_idx) + len(held_idx) == len(full.train)
    assert len(held_idx) == math.ceil(0.2 * len(full.train))  # scikit-learn rounds the held-out count up
    per_class, held = Counter(full.train.targets.tolist()), Counter(splits.val.targets)
    assert all(abs(held[c] - 0.2 * n) <= 1 for c, n in per_class.items())  # stratified
    assert torch.equal(splits.test.images, full.val.images)  # the test split is untouched
    assert splits.info["val_split"]["val"] == len(held_idx)
    # items are re-indexed 0..n-1 (memory banks index by position); held-out images are not augmented
    image, target, index = splits.val[5]
    assert index == 5 and target == int(full.train.targets[held_idx[5]])
    torch.testing.assert_close(image, full.train.images[held_idx[5]])
    assert splits.train[3][2] == 3 and splits.train[3][1] == int(full.train.targets[train_idx[3]])


def test_loaders_carry_the_test_split_only_with_a_held_out_split():
    _, val_loader, _ = build_dataloaders(_digits("DATASET.VAL_SPLIT", "0.1"))
    assert len(val_loader.dataset) == 144 and len(val_loader.test_loader.dataset) == 360
    assert build_dataloaders(_digits())[1].test_loader is None


@pytest.mark.parametrize("value", ["1.0", "-0.1"])
def test_out_of_range_fraction_is_refused(value):
    with pytest.raises(ConfigError, match=rf"DATASET\.VAL_SPLIT must be a fraction in \[0, 1\).*got {value}"):
        _digits("DATASET.VAL_SPLIT", value)


def test_selection_plateau_and_early_stop_follow_the_held_out_split(tmp_path, monkeypatch):
    from kdlab.engine import optim

    observed = []

    original = optim.Plateau.observe

    def spy(self, metrics):
        observed.append(metrics["test_acc"])
        return original(self, metrics)

    monkeypatch.setattr(optim.Plateau, "observe", spy)
    cfg = _digits("DATASET.VAL_SPLIT", "0.2", "SOLVER.EPOCHS", "3", "SOLVER.MAX_STEPS_PER_EPOCH", "3",
                  "SOLVER.BATCH_SIZE", "16", "SOLVER.SCHEDULER", "plateau", "SOLVER.DEVICE", "cpu",
                  "LOG.PROGRESS", "False", "LOG.PREFIX", str(tmp_path), "SOLVER.EARLY_STOP_PATIENCE", "5")
    summary = train(cfg)
    metrics = json.load(open(os.path.join(summary["run_dir"], "metrics.json")))
    history = metrics["history"]
    assert all({"val_acc", "val_loss", "test_acc", "test_loss"} <= set(h) for h in history)
    assert observed == [h["val_acc"] for h in history]  # the plateau scheduler saw the held-out accuracy
    best = max(history, key=lambda h: h["val_acc"])  # first maximum: a tie does not move the best epoch
    assert metrics["selection"] == "val" and metrics["best_epoch"] == best["epoch"]
    assert metrics["best_val_acc"] == best["val_acc"] and metrics["best_acc"] == best["test_acc"]
    assert metrics["last_acc"] == history[-1]["test_acc"] and metrics["last_val_acc"] == history[-1]["val_acc"]
    saved = torch.load(os.path.join(summary["run_dir"], "best"), weights_only=False)
    assert saved["epoch"] == best["epoch"]
    from kdlab.reports.table import find_runs, markdown_report, summarize

    report = markdown_report(summarize(find_runs([str(tmp_path)])))
    assert "Val best" in report and f"{best['val_acc']:.2f}" in report and "Val best is the best held-out" in report
    # tools/eval.py on the run's config scores the test split, and student_best is the val-chosen epoch
    from kdlab.engine.builder import evaluate_checkpoint

    scored = evaluate_checkpoint(cfg, os.path.join(summary["run_dir"], "student_best"))
    assert scored["num_samples"] == 360 and scored["top1"] == pytest.approx(best["test_acc"], abs=1e-9)
