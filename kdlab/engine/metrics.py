"""Accuracy counting on device (no host sync per step) and evaluation over a loader."""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from kdlab.engine.distributed import all_reduce_sum


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """Number of samples whose target is among the top-k logits, for each k (a float tensor)."""
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hit = pred.eq(target[:, None])
    return torch.stack([hit[:, : min(k, maxk)].any(1).sum() for k in ks]).float()


@torch.no_grad()
def evaluate(
    model: Callable[[torch.Tensor], torch.Tensor],
    loader,
    device: torch.device,
    num_classes: int,
    batch_transform: Optional[Callable] = None,
    autocast: Optional[Callable] = None,
    collect: bool = False,
) -> dict:
    """Top-1/top-5 (percent), mean CE loss and, if collect, the confusion matrix, over ranks."""
    sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss, top1, top5, count
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device) if collect else None
    for image, target, _ in loader:
        image = image.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        if batch_transform is not None:
            image = batch_transform(image)
        if autocast is not None:
            with autocast():
                logits = model(image)
        else:
            logits = model(image)
        logits = logits.float()
        sums[0] += F.cross_entropy(logits, target, reduction="sum").double()
        sums[1:3] += topk_correct(logits, target).double()
        sums[3] += target.numel()
        if collect:
            idx = target * num_classes + logits.argmax(1)
            confusion += torch.bincount(idx, minlength=num_classes**2).view(num_classes, num_classes)
    all_reduce_sum(sums)
    if collect:
        all_reduce_sum(confusion)
    n = max(sums[3].item(), 1.0)
    out = {
        "test_loss": sums[0].item() / n,
        "test_acc": 100.0 * sums[1].item() / n,
        "test_acc_top5": 100.0 * sums[2].item() / n,
        "num_samples": int(sums[3].item()),
    }
    if collect:
        out["confusion"] = confusion.cpu()
    return out
