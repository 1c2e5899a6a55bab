"""Distillation losses as pure functions, computed in float32 (float64 stays float64) even under AMP.

Each value equals the public reference implementation's on the inputs in
shared/reference/golden_losses.json (tests/test_losses.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _f32(x: torch.Tensor) -> torch.Tensor:
    """Upcast half/bfloat16 to float32; keep float32/float64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def standardize(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Z-score logits per sample over classes: (z - mean) / (eps + std), std unbiased (Sun et al. CVPR 2024)."""
    logits = _f32(logits)
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (eps + std)


def kd_loss(
    logits_student: torch.Tensor,
    logits_teacher: torch.Tensor,
    temperature: float,
    logit_stand: bool = False,
) -> torch.Tensor:
    """Hinton KD: T^2 * mean_b KL(softmax(t/T) || softmax(s/T)); logits standardized first if asked."""
    with torch.autocast(device_type=logits_student.device.type, enabled=False):
        s, t = _f32(logits_student), _f32(logits_teacher)
        if logit_stand:
            s, t = standardize(s), standardize(t)
        log_p_s = F.log_softmax(s / temperature, dim=1)
        log_p_t = F.log_softmax(t / temperature, dim=1)
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1).mean()
        return kl * temperature**2
