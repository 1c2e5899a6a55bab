"""Model facts for reports: parameters, MACs/FLOPs (torch.utils.flop_counter) and measured latency."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def model_info(
    model: nn.Module,
    input_size: int | Sequence[int],
    in_channels: int = 3,
    device: str | torch.device = "cpu",
    latency_runs: int = 10,
) -> dict:
    """Parameters, FLOPs and MACs (= FLOPs / 2) of one batch-1 forward, and its median latency in ms.

    FLOPs count the matrix products and convolutions (what FlopCounterMode counts), the usual
    convention of papers' MAC tables. The model is moved to `device` and left there; its
    train/eval mode is restored. latency_runs=0 skips timing (latency_ms is None).
    """
    height, width = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    device = torch.device(device)
    was_training = model.training
    model.to(device).eval()
    x = torch.randn(1, in_channels, height, width, device=device)
    try:
        with torch.no_grad():
            counter = FlopCounterMode(display=False)
            with counter:
                model(x)
            flops = counter.get_total_flops()
            latency = _median_latency_ms(model, x, latency_runs) if latency_runs > 0 else None
    finally:
        model.train(was_training)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "macs": flops // 2,
        "flops": flops,
        "latency_ms": latency,
    }


def _median_latency_ms(model: nn.Module, x: torch.Tensor, runs: int, warmup: int = 2) -> float:
    """Median wall time of `runs` forwards after `warmup` ones, synchronizing CUDA around each."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(runs):
        sync()
        start = time.perf_counter()
        model(x)
        sync()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)
