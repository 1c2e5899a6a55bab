"""Checkpoint files: written atomically (temp file + fsync + rename), read with weights_only=True."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import torch

from kdlab.models.checkpoint import safe_torch_load

FORMAT = "kdlab"
FORMAT_VERSION = 1


def atomic_save(obj: Any, path: str) -> None:
    """Save obj to path so that path is always either the old file or the complete new one."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def load_training_state(path: str) -> dict:
    """Read a kdlab training checkpoint (latest/best/epoch_N) safely."""
    from kdlab.errors import CheckpointError

    state = safe_torch_load(path, "checkpoint")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a kdlab training checkpoint (it has no resumable state)")
    return state
