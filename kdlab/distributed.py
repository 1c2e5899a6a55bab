"""torch.distributed helpers: process-group set-up from torchrun's environment, rank checks, reductions."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (no-op in a single process)."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj):
    """Rank 0's value on every rank (no-op in a single process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def replicas_agree(module: torch.nn.Module, device: torch.device) -> bool:
    """True if every rank holds bit-identical parameters and buffers (checked by exact digests)."""
    if not is_distributed():
        return True
    digests = []
    for t in list(module.parameters()) + list(module.buffers()):
        v = t.detach().double().flatten()
        weights = torch.arange(1, v.numel() + 1, device=v.device, dtype=torch.float64)
        digests += [v.sum(), (v * weights).sum(), v.abs().max() if v.numel() else v.new_zeros(())]
    mine = torch.stack(digests).to(device)
    gathered = [torch.empty_like(mine) for _ in range(world_size())]
    dist.all_gather(gathered, mine)
    return all(torch.equal(gathered[0], g) for g in gathered[1:])
