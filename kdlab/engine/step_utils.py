"""Helpers of the training step shared by the trainer, the precision trial and the benchmarks: autocast, RNG
state (saved in checkpoints, restored on resume), moving batches to the device."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from yacs.config import CfgNode


def autocast_context(cfg: CfgNode, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of autocast contexts for SOLVER.AMP (bf16 on CPU/CUDA, fp16 on CUDA)."""
    if "auto" in (cfg.SOLVER.AMP, cfg.SOLVER.CHANNELS_LAST):
        raise ValueError("SOLVER.AMP / CHANNELS_LAST auto must be resolved first (kdlab.engine.precision.apply)")
    if not cfg.SOLVER.AMP:
        return contextlib.nullcontext
    dtype = getattr(torch, cfg.SOLVER.AMP_DTYPE)
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """All RNG states in types that torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "gauss": float(gauss)}
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_device(x: Any, device: torch.device, channels_last: bool = False) -> Any:
    if isinstance(x, (tuple, list)):
        return type(x)(_to_device(v, device, channels_last) for v in x)
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4 and x.is_floating_point():
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _reported(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in ("num_samples", "num_pixels")}
