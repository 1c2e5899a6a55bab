"""Shared fixtures: paths, a CPU-only environment, and a small trained digits teacher."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

# Tiny models run fastest, and reproducibly, on one thread; subprocesses set their own.
torch.set_num_threads(1)
# SOLVER.AMP / CHANNELS_LAST auto: no timed trial (the capability default) and no cache outside the
# session, also for subprocesses; tests of the trial and the cache set these themselves.
os.environ["KDLAB_CACHE_DIR"] = tempfile.mkdtemp(prefix="kdlab-test-cache-")
os.environ["KDLAB_PRECISION_TRIAL_S"] = "0"
atexit.register(shutil.rmtree, os.environ["KDLAB_CACHE_DIR"], True)


def shared_dir() -> str:
    return os.environ.get("KDLAB_SHARED", os.path.join(REPO, "..", "shared"))


@pytest.fixture(scope="session")
def repo_root() -> str:
    return REPO


@pytest.fixture(scope="session")
def shared_reference() -> str:
    path = os.path.join(shared_dir(), "reference")
    if not os.path.isdir(path):
        pytest.skip(f"shared reference folder not found at {path} (set KDLAB_SHARED)")
    return path


def digits_opts(prefix: str, epochs: int = 3, **extra: str) -> list[str]:
    """Overrides for fast digits runs inside tests."""
    opts = ["LOG.PREFIX", prefix, "SOLVER.EPOCHS", str(epochs), "LOG.PROGRESS", "False", "SOLVER.DEVICE", "cpu"]
    for k, v in extra.items():
        opts += [k, str(v)]
    return opts


@pytest.fixture(scope="session")
def digits_teacher_ckpt(tmp_path_factory) -> str:
    """A digits teacher trained for a few epochs once per test session; returns its student_best path."""
    from kdlab.config import load_cfg
    from kdlab.engine.run import train

    prefix = str(tmp_path_factory.mktemp("teacher"))
    cfg = load_cfg(os.path.join(REPO, "configs/digits/vanilla/digits_teacher.yaml"), digits_opts(prefix, epochs=8))
    summary = train(cfg)
    assert summary["last_acc"] > 90.0, summary["last_acc"]
    return os.path.join(summary["run_dir"], "student_best")
