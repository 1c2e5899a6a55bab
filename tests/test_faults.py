"""Faults: untrusted files, SIGKILL/Ctrl-C and resume, non-finite losses, bad input, config fuzzing."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from conftest import REPO, digits_opts
from test_cli import run_tool

from kdlab.config import load_cfg
from kdlab.engine import trainer as trainer_mod
from kdlab.engine.run import train
from kdlab.errors import KdlabError, NonFiniteLossError

VANILLA = os.path.join(REPO, "configs/digits/vanilla/digits_teacher.yaml")
KD = os.path.join(REPO, "configs/digits/kd/digits_teacher_digits_student.yaml")
STUDENT = ["DISTILLER.STUDENT", "digits_student", "LOG.PROGRESS", "False", "SOLVER.DEVICE", "cpu"]


class _Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.fixture
def evil_ckpt(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"model": _Evil(str(marker)), "format": "kdlab"}, str(path))
    return path, marker


def _one_line_error(res) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    return lines[0]


def test_malicious_teacher_checkpoint_is_refused(tmp_path, evil_ckpt):
    path, marker = evil_ckpt
    line = _one_line_error(run_tool("train.py", "--cfg", KD, "DISTILLER.TEACHER_CKPT", str(path),
                                    "LOG.PREFIX", str(tmp_path / "logs"), *STUDENT))
    assert "refusing to load" in line and not marker.exists()


def test_malicious_resume_checkpoint_is_refused(tmp_path, evil_ckpt):
    path, marker = evil_ckpt
    run_dir = tmp_path / "logs" / "digits" / "digits_teacher"
    run_dir.mkdir(parents=True)
    (run_dir / "latest").write_bytes(path.read_bytes())
    line = _one_line_error(run_tool("train.py", "--cfg", VANILLA, "--resume", "LOG.PREFIX", str(tmp_path / "logs"),
                                    *STUDENT))
    assert "refusing to load" in line and not marker.exists()


def test_malicious_eval_checkpoint_is_refused(evil_ckpt):
    path, marker = evil_ckpt
    line = _one_line_error(run_tool("eval.py", "--cfg", VANILLA, "--ckpt", str(path)))
    assert "refusing to load" in line and not marker.exists()


def _train_cmd(prefix: str, *extra: str, epochs: int = 3) -> list[str]:
    return [sys.executable, os.path.join(REPO, "tools/train.py"), "--cfg", VANILLA, "LOG.PREFIX", prefix,
            "SOLVER.EPOCHS", str(epochs), "SOLVER.BATCH_SIZE", "16", "DATASET.AUGMENT", "True",
            "DISTILLER.MODEL_KWARGS.DROPOUT", "0.2", *STUDENT, *extra]


def _student(prefix) -> dict:
    return torch.load(os.path.join(prefix, "digits", "digits_teacher", "student_latest"), weights_only=True)["model"]


def _wait_for(path: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    t0 = time.time()
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() - t0 < timeout
        time.sleep(0.05)


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    """A run killed with SIGKILL (nothing runs at exit) leaves a complete `latest`; resuming it ends with the
    weights of an uninterrupted run. Only the killed run is a subprocess; the others run in this process,
    on one thread like it (OMP_NUM_THREADS=1, conftest)."""
    ref = str(tmp_path / "ref")
    train(load_cfg(VANILLA, _train_cmd(ref)[4:]))
    killed = str(tmp_path / "killed")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(_train_cmd(killed), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    _wait_for(os.path.join(killed, "digits", "digits_teacher", "latest"), proc)
    proc.send_signal(signal.SIGKILL)  # epoch 1 is saved; epoch 2 (90 steps) has just begun
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    state = torch.load(os.path.join(killed, "digits", "digits_teacher", "latest"), weights_only=True)
    assert 1 <= state["epoch"] < 3  # the checkpoint on disk is complete and loadable, the run unfinished
    summary = train(load_cfg(VANILLA, _train_cmd(killed)[4:]), resume=True)
    assert summary["last_epoch"] == 3
    a, b = _student(ref), _student(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def _read_into(stream, out: list) -> None:
    for chunk in iter(lambda: os.read(stream.fileno(), 4096), b""):
        out.append(chunk.decode(errors="replace"))


def _wait_for_steps(proc: subprocess.Popen, err: list, timeout: float = 120) -> int:
    """Block until the tqdm bar on stderr shows at least one training step done; return that count."""
    t0 = time.time()
    while True:
        done = [int(n) for n, total in re.findall(r"\| *(\d+)/(\d+) \[", "".join(err)) if 0 < int(n) < int(total)]
        if done:
            return done[-1]
        assert proc.poll() is None, "".join(err)[-2000:]
        assert time.time() - t0 < timeout
        time.sleep(0.01)


MID_EPOCH = ["SOLVER.EPOCHS", "1", "SOLVER.BATCH_SIZE", "4", "DATASET.NUM_WORKERS", "2"]  # 360 steps


def test_ctrl_c_to_the_process_group_mid_epoch_then_resume_is_bit_identical(tmp_path):
    """Ctrl-C reaches the trainer and its 2 loader workers (one process group) while a data-bound epoch of
    360 steps runs; the run saves a mid-epoch checkpoint, and resuming it ends where an uninterrupted run does.
    Workers that died of the SIGINT would end the run with "DataLoader worker exited unexpectedly"."""
    ref = str(tmp_path / "ref")
    train(load_cfg(VANILLA, _train_cmd(ref, *MID_EPOCH, "DATASET.NUM_WORKERS", "0")[4:]))
    prefix = str(tmp_path / "stopped")
    env = dict(os.environ, OMP_NUM_THREADS="1")  # the reference ran on one thread too (conftest)
    cmd = _train_cmd(prefix, *MID_EPOCH, "LOG.PROGRESS", "True")
    cmd[1] = os.path.join(REPO, "tests", "train_data_bound.py")  # tools/train.py, waiting on its loader workers
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True)
    err: list[str] = []
    reader = threading.Thread(target=_read_into, args=(proc.stderr, err), daemon=True)
    reader.start()
    seen = _wait_for_steps(proc, err)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)
    reader.join(timeout=10)
    text = "".join(err)
    assert proc.returncode == 130, text[-2000:]
    assert "resume with --resume" in text and "Traceback" not in text and "DataLoader worker" not in text
    assert text.count("stop requested") == 1, text[-2000:]  # the workers ignored the SIGINT
    state = torch.load(os.path.join(prefix, "digits", "digits_teacher", "latest"), weights_only=True)
    assert state["epoch"] == 0 and seen <= state["step_in_epoch"] < 360  # 1437 images / 4 per step
    # resumed in this process, loading in the main process (DATASET.NUM_WORKERS is resume-neutral)
    summary = train(load_cfg(VANILLA, _train_cmd(prefix, *MID_EPOCH, "DATASET.NUM_WORKERS", "0")[4:]), resume=True)
    assert summary["last_epoch"] == 1
    a, b = _student(ref), _student(prefix)
    assert all(torch.equal(a[k], b[k]) for k in a)


def _nan_at_step(monkeypatch, bad_step: int):
    original = trainer_mod.Trainer.train_step

    def poisoned(self, batch, epoch, step, sums):
        if self.global_step == bad_step:
            image, target, index = batch
            batch = (image * float("nan"), target, index)
        return original(self, batch, epoch, step, sums)

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", poisoned)


def test_nan_loss_stops_naming_step_and_term_keeping_checkpoint(tmp_path, monkeypatch):
    cfg = load_cfg(VANILLA, digits_opts(str(tmp_path), epochs=3, **{"DISTILLER.STUDENT": "digits_student"}))
    _nan_at_step(monkeypatch, 30)  # epoch 2 (23 steps per epoch)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2 step 7 .*loss_ce=nan.*first bad term 'loss_ce'"):
        train(cfg)
    state = torch.load(os.path.join(tmp_path, "digits", "digits_teacher", "latest"), weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["student"].values() if v.is_floating_point())


def test_interrupt_after_an_unchecked_nan_keeps_latest_and_names_the_step(tmp_path, monkeypatch):
    """As on CUDA, where the loss is checked only every LOG.TENSORBOARD_FREQ steps: a NaN at epoch 2 step 7
    and a stop request one step later, before any check. The interrupt must not save the NaN weights."""
    cfg = load_cfg(VANILLA, digits_opts(str(tmp_path), epochs=3, **{"DISTILLER.STUDENT": "digits_student",
                                                                   "LOG.TENSORBOARD_FREQ": 1000}))
    _nan_at_step(monkeypatch, 30)
    poisoned = trainer_mod.Trainer.train_step

    def cuda_like(self, batch, epoch, step, sums):
        self.check_finite_every_step = False
        out = poisoned(self, batch, epoch, step, sums)
        self.stop_requested = self.global_step == 31
        return out

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", cuda_like)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2 step 7 .*loss_ce=nan"):
        train(cfg)
    state = torch.load(os.path.join(tmp_path, "digits", "digits_teacher", "latest"), weights_only=True)
    assert (state["epoch"], state["step_in_epoch"]) == (1, 0)
    assert all(torch.isfinite(v).all() for v in state["student"].values() if v.is_floating_point())


def test_skip_nonfinite_skips_the_batch(tmp_path, monkeypatch):
    cfg = load_cfg(VANILLA, digits_opts(str(tmp_path), epochs=2, **{"DISTILLER.STUDENT": "digits_student",
                                                                   "SOLVER.SKIP_NONFINITE": True}))
    _nan_at_step(monkeypatch, 30)
    summary = train(cfg)
    assert summary["last_epoch"] == 2 and summary["last_acc"] > 50


def test_unwritable_log_prefix(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    line = _one_line_error(run_tool("train.py", "--cfg", VANILLA, "LOG.PREFIX", str(blocker / "logs"), *STUDENT))
    assert "LOG.PREFIX" in line


def test_teacher_of_other_class_count_names_key_and_shapes(tmp_path, digits_teacher_ckpt):
    state = torch.load(digits_teacher_ckpt, weights_only=True)
    state["model"]["fc.weight"] = state["model"]["fc.weight"][:7]
    state["model"]["fc.bias"] = state["model"]["fc.bias"][:7]
    bad = tmp_path / "t.pth"
    torch.save(state, str(bad))
    line = _one_line_error(run_tool("train.py", "--cfg", KD, "DISTILLER.TEACHER_CKPT", str(bad),
                                    "LOG.PREFIX", str(tmp_path), *STUDENT))
    assert "'fc.weight' has shape (7, 128) in the file but (10, 128)" in line


def test_debug_flag_shows_traceback():
    res = run_tool("train.py", "--cfg", VANILLA, "SOLVER.LRR", "1", "--debug")
    assert res.returncode != 0 and "Traceback" in res.stderr


def _mutations(rng: random.Random):
    keys = ["SOLVER.LR", "SOLVER.EPOCHS", "SOLVER.BATCH_SIZE", "KD.TEMPERATURE", "DISTILLER.TYPE",
            "DISTILLER.STUDENT", "DATASET.TYPE", "SOLVER.TYPE", "SOLVER.SCHEDULER", "SOLVER.LR_DECAY_STAGES",
            "SOLVER.AMP", "DKD.T", "LOG.PREFIX", "SOLVER.LRR", "EXPERIMENT", "KD.LOSS", "DATASET.TEST.BATCH_SIZE",
            "SOLVER.WARMUP_EPOCHS", "SOLVER.DEVICE", "DISTILLER.MODEL_KWARGS.DROPOUT"]
    values = ["0", "-1", "1e9", "nan", "abc", "True", "[1, 2]", "[2, 1]", "{'a': 1}", "None", "''", "KD", "SGD",
              "resnet8", "3.5", "cuda:x", "(1,)", "[[]]", "1e-300", "0.5"]
    for _ in range(300):
        n = rng.randint(1, 3)
        yield [tok for _ in range(n) for tok in (rng.choice(keys), rng.choice(values))]


def test_config_fuzz_never_crashes_unhandled():
    rng = random.Random(1234)
    loaded = failed = 0
    for opts in _mutations(rng):
        try:
            load_cfg(KD, opts)
            loaded += 1
        except KdlabError:
            failed += 1
    assert loaded > 10 and failed > 100


def test_unconnectable_feature_layers_fail_before_the_run_directory_exists(tmp_path, digits_teacher_ckpt):
    from kdlab.errors import ConfigError

    cfg = load_cfg(os.path.join(REPO, "configs/digits/featkd/digits_teacher_digits_student.yaml"),
                   digits_opts(str(tmp_path), epochs=1, **{"DISTILLER.TEACHER_CKPT": digits_teacher_ckpt,
                                                           "FEATKD.STUDENT_LAYERS": "[7]"}))
    with pytest.raises(ConfigError, match="FEATKD"):
        train(cfg)
    assert not (tmp_path / "digits").exists()
