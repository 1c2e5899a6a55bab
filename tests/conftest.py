"""Shared fixtures: paths, a CPU-only environment, and a small trained digits teacher."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile

import pytest
import torch
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

# Tiny models run fastest, and reproducibly, on one thread (the suite runs in two worker processes,
# pytest -n 2); subprocesses set their own.
torch.set_num_threads(1)
# SOLVER.AMP / CHANNELS_LAST auto: no timed trial (the capability default) and no cache outside the
# session, also for subprocesses; tests of the trial and the cache set these themselves.
os.environ["KDLAB_CACHE_DIR"] = tempfile.mkdtemp(prefix="kdlab-test-cache-")
os.environ["KDLAB_PRECISION_TRIAL_S"] = "0"
atexit.register(shutil.rmtree, os.environ["KDLAB_CACHE_DIR"], True)


REFERENCE = os.path.join(REPO, "tests", "reference")


def load_script(relpath: str, name: str):
    """Import a repository script (tools/*.py, tests/reference/make_*.py) as a module, by path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, relpath))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_table(name: str) -> dict:
    """A table from tests/reference/ (made by the make_*.py scripts there; always present)."""
    with open(os.path.join(REFERENCE, name), encoding="utf-8") as f:
        return json.load(f)


def unflatten(flat: dict) -> dict:
    """{"A.B": 1} -> {"A": {"B": 1}}."""
    out: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


@pytest.fixture(scope="session")
def repo_root() -> str:
    return REPO


@pytest.fixture(scope="session")
def peer_config_dir(tmp_path_factory) -> str:
    """The peer YAML configs, rebuilt from tests/reference/peer_configs.json under their relative paths."""
    root = tmp_path_factory.mktemp("peer_configs")
    for rel, flat in reference_table("peer_configs.json")["files"].items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(unflatten(flat), sort_keys=False))
    return str(root)


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
