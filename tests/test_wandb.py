"""LOG.WANDB: a Weights & Biases run (offline mode) with the run's name, config and the scalars TensorBoard gets."""

from __future__ import annotations

import glob
import json
import os
import struct
import time

import pytest
from conftest import REPO, digits_opts

from kdlab.config import load_cfg
from kdlab.engine.run import train

wandb_pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")
BLOCK = 32768  # the .wandb file is a LevelDB-style log: 7-byte header, then 32 KiB blocks of records


def read_records(path: str) -> list:
    """Every protobuf Record in an offline run's .wandb file."""
    data, out, pos, buf = open(path, "rb").read(), [], 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        buf, pos = buf + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last fragment of one
            record = wandb_pb.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


def finished_records(path: str, timeout_s: float = 60.0) -> list:
    """The records of an offline run file once its writer has appended the run's `exit` record.

    wandb's service process writes the file asynchronously; under load `finish()` can return before the
    last records reach the disk, so the test waits (up to timeout_s) for the complete file."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = read_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def _items(items) -> dict:
    return {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in items}


def test_wandb_offline_run_holds_config_history_and_summary(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb_dir").mkdir()
    cfg = load_cfg(os.path.join(REPO, "configs/digits/vanilla/digits_teacher.yaml"),
                   digits_opts(str(tmp_path / "logs"), epochs=2, **{
                       "DISTILLER.STUDENT": "digits_student", "SOLVER.MAX_STEPS_PER_EPOCH": 4,
                       "LOG.TENSORBOARD_FREQ": 2, "LOG.WANDB": True, "DATASET.NUM_WORKERS": 0}))
    summary = train(cfg)
    files = glob.glob(str(tmp_path / "wandb_dir" / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1
    records = finished_records(files[0])
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.project, run.display_name) == (cfg.EXPERIMENT.PROJECT, "digits_teacher")
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config["SOLVER"]["MAX_STEPS_PER_EPOCH"] == 4 and config["LOG"]["WANDB"] is True
    history = [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    steps = [h["global_step"] for h in history if "train/loss_ce" in h]
    assert steps == [2, 4, 6, 8]  # every LOG.TENSORBOARD_FREQ steps, on the global step
    epochs = {h["epoch"]: h for h in history if "epoch/test_acc" in h}
    assert sorted(epochs) == [1, 2]
    for record in summary["history"]:
        assert epochs[record["epoch"]]["epoch/test_acc"] == pytest.approx(record["test_acc"])
        assert epochs[record["epoch"]]["epoch/train_loss"] == pytest.approx(record["train_loss"])
    final = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            final.update(_items(r.summary.update))
    assert final["best_acc"] == pytest.approx(summary["best_acc"]) and final["last_epoch"] == 2
