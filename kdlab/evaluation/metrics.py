"""Accuracy counting on device (no host sync per step) and evaluation over a loader: top-1/top-5 for
classification, confusion matrix, mIoU and pixel accuracy for segmentation.

Pure metric code: the Trainer (kdlab.engine) scores each epoch with it, the reports here build on it.
Under torchrun the sums are taken over all ranks."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from kdlab.constants import IGNORE_INDEX


def _sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over the ranks of the process group, if one is set up (torchrun); else leave it."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """Number of samples whose target is among the top-k logits, for each k (a float tensor)."""
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hit = pred.eq(target[:, None])
    return torch.stack([hit[:, : min(k, maxk)].any(1).sum() for k in ks]).float()


def _predictions(
    model, loader, device, batch_transform=None, autocast=None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(float32 logits, target) for each batch of the loader, on `device`."""
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
        yield logits.float(), target


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
    for logits, target in _predictions(model, loader, device, batch_transform, autocast):
        sums[0] += F.cross_entropy(logits, target, reduction="sum").double()
        sums[1:3] += topk_correct(logits, target).double()
        sums[3] += target.numel()
        if collect:
            confusion += confusion_matrix(logits.argmax(1), target, num_classes, ignore_index=None)
    _sum_over_ranks(sums)
    if collect:
        _sum_over_ranks(confusion)
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


@torch.no_grad()
def mean_loss(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    loader,
    device: torch.device,
    batch_transform: Optional[Callable] = None,
    autocast: Optional[Callable] = None,
) -> float:
    """The per-sample mean over the loader (and ranks) of loss_fn(image, target), a batch-mean loss."""
    sums = torch.zeros(2, device=device, dtype=torch.float64)  # loss * batch, samples
    for image, target, _ in loader:
        image, target = image.to(device, non_blocking=True), target.to(device, non_blocking=True)
        if batch_transform is not None:
            image = batch_transform(image)
        with autocast() if autocast is not None else contextlib.nullcontext():
            loss = loss_fn(image, target)
        sums[0] += loss.detach().double() * target.shape[0]
        sums[1] += target.shape[0]
    _sum_over_ranks(sums)
    return sums[0].item() / max(sums[1].item(), 1.0)


# ---------------------------------------------------------------- segmentation
def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: Optional[int] = IGNORE_INDEX
) -> torch.Tensor:
    """num_classes x num_classes int64 counts, rows = true class, columns = predicted; pixels (or samples)
    whose target is ignore_index are left out."""
    pred, target = pred.reshape(-1), target.reshape(-1)
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    idx = target.long() * num_classes + pred.long()
    return torch.bincount(idx, minlength=num_classes**2).view(num_classes, num_classes)


def iou_from_confusion(confusion: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(mIoU, per-class IoU) as fractions: IoU_c = TP / (TP + FP + FN). A class absent from both the
    targets and the predictions has no IoU (NaN) and is left out of the mean, as mmsegmentation does."""
    cm = confusion.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    defined = ~iou.isnan()
    miou = iou[defined].mean().item() if bool(defined.any()) else float("nan")
    return miou, iou


def correct_and_count(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Training accuracy counts on device: (top-1 hits, samples) for N x C logits, (correct pixels,
    labelled pixels) for N x C x H x W ones."""
    if logits.dim() == 4:
        labelled = target != IGNORE_INDEX
        return (logits.argmax(1).eq(target) & labelled).sum().double(), labelled.sum().double()
    # torch.full, not torch.tensor: a tensor built from a Python number on CUDA is a synchronizing copy
    return topk_correct(logits, target, (1,))[0].double(), torch.full(
        (), float(target.shape[0]), dtype=torch.float64, device=logits.device
    )


@torch.no_grad()
def evaluate_segmentation(
    model: Callable[[torch.Tensor], torch.Tensor],
    loader,
    device: torch.device,
    num_classes: int,
    batch_transform: Optional[Callable] = None,
    autocast: Optional[Callable] = None,
    collect: bool = False,
) -> dict:
    """mIoU and pixel accuracy (percent) and mean per-pixel CE over the labelled pixels, summed over ranks.

    test_acc is the mIoU, so best-checkpoint selection, early stopping and plateau schedules follow it.
    With collect, also the confusion matrix and the per-class IoU (fractions, NaN for absent classes).
    """
    sums = torch.zeros(2, device=device, dtype=torch.float64)  # loss sum, images
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    for logits, target in _predictions(model, loader, device, batch_transform, autocast):
        sums[0] += F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum").double()
        sums[1] += target.shape[0]
        confusion += confusion_matrix(logits.argmax(1), target, num_classes)
    _sum_over_ranks(sums)
    _sum_over_ranks(confusion)
    confusion = confusion.cpu()
    pixels = confusion.sum().item()
    miou, per_class = iou_from_confusion(confusion)
    out = {
        "test_loss": sums[0].item() / max(pixels, 1),
        "test_acc": 0.0 if math.isnan(miou) else 100.0 * miou,  # NaN: nothing labelled nor predicted
        "test_pixel_acc": 100.0 * confusion.diag().sum().item() / max(pixels, 1),
        "num_samples": int(sums[1].item()),
        "num_pixels": int(pixels),
    }
    if collect:
        out["confusion"] = confusion
        out["per_class_iou"] = per_class
    return out
