"""Process-group set-up under torchrun (WORLD_SIZE > 1); nothing happens in a single process."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from yacs.config import CfgNode

from kdlab.distributed import env_world_size, is_distributed


def maybe_init_distributed(cfg: CfgNode) -> bool:
    """Initialize torch.distributed from torchrun's environment; return True if distributed."""
    if env_world_size() <= 1 or is_distributed():
        return is_distributed()
    use_cuda = torch.cuda.is_available() and cfg.SOLVER.DEVICE != "cpu"
    backend = cfg.SOLVER.DIST_BACKEND or ("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return True


def shutdown_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()
