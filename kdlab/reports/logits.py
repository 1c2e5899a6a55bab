"""Logit views of a teacher and a student, raw and standardized (Sun et al., "Logit Standardization
in Knowledge Distillation", CVPR 2024).

A student cannot match the teacher's logit shift and scale, only their relations; the paper's
pictures show this as different per-sample logit means and standard deviations for the two
models, which z-score standardization (kdlab.distillers.losses.standardize) maps to 0 and 1.
Here: histograms (with a KDE) of logit values, of each sample's logit mean and of its standard
deviation, a teacher-vs-student scatter of the logits, and one sample's logits as bars.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Optional

import numpy as np
import torch
from yacs.config import CfgNode

from kdlab.distillers.losses import standardize
from kdlab.reports.plots import COLORS, new_figure, paper_style, save_figure

MAX_POINTS = 12000  # scatter points drawn; more only blur into a blob and bloat the PNG
KDE_POINTS = 4000
PIXEL_STRIDE = 17  # segmentation: every 17th labelled pixel is a sample (odd: no alignment with the grid)


@torch.no_grad()
def collect_logits(
    models: dict[str, Callable[[torch.Tensor], torch.Tensor]],
    loader,
    device: torch.device,
    batch_transform: Optional[Callable] = None,
    max_samples: int = 10000,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each model's logits (N x C, float32, CPU) and the targets on the first max_samples samples of loader.

    Every model sees the same images; per-pixel logits (N, C, H, W) become one sample per labelled pixel.
    """
    outs: dict[str, list[torch.Tensor]] = {name: [] for name in models}
    targets: list[torch.Tensor] = []
    count = 0
    for image, target, _ in loader:
        image = image.to(device)
        if batch_transform is not None:
            image = batch_transform(image)
        keep = None
        for name, model in models.items():
            logits = model(image).float().cpu()
            if logits.dim() == 4:
                logits = logits.permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
                if keep is None:
                    flat = target.reshape(-1)
                    keep = ((flat >= 0) & (flat < logits.shape[1])).nonzero().squeeze(1)[::PIXEL_STRIDE]
                logits = logits[keep]
            outs[name].append(logits)
        targets.append(target.reshape(-1)[keep] if keep is not None else target)
        count += len(targets[-1])
        if count >= max_samples:
            break
    return {k: torch.cat(v)[:max_samples] for k, v in outs.items()}, torch.cat(targets)[:max_samples].long()


def per_sample_stats(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's logit mean and (unbiased, as in standardize) standard deviation over classes."""
    return logits.mean(1), logits.std(1)


def _describe(x: torch.Tensor) -> dict:
    return {"mean": x.mean().item(), "std": x.std().item(), "min": x.min().item(), "max": x.max().item()}


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return (a @ b / (a.norm() * b.norm()).clamp_min(1e-12)).item()


def logit_statistics(logits: dict[str, torch.Tensor], targets: torch.Tensor) -> dict:
    """Numbers behind the pictures: accuracy, logit values and per-sample mean/std, raw and standardized."""
    stats: dict = {"num_samples": len(targets), "num_classes": next(iter(logits.values())).shape[1]}
    for name, z in logits.items():
        entry = {"top1": 100.0 * (z.argmax(1) == targets).float().mean().item()}
        for view, v in (("raw", z), ("standardized", standardize(z))):
            mean, std = per_sample_stats(v)
            entry[view] = {"values": _describe(v), "sample_mean": _describe(mean), "sample_std": _describe(std)}
        stats[name] = entry
    if len(logits) == 2:
        (a_name, a), (b_name, b) = logits.items()
        stats["pearson_r"] = {"raw": _pearson(a, b), "standardized": _pearson(standardize(a), standardize(b))}
        stats["argmax_agreement"] = 100.0 * (a.argmax(1) == b.argmax(1)).float().mean().item()
    return stats


# ---------------------------------------------------------------------------------- figures
def _subsample(x: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    if len(x) <= n:
        return x
    return x[np.random.default_rng(seed).choice(len(x), n, replace=False)]


def _hist(ax, series: dict[str, np.ndarray], xlabel: str, bins: int = 60) -> None:
    """Overlaid density histograms (+ Gaussian KDE where the data are not degenerate)."""
    from scipy.stats import gaussian_kde

    allv = np.concatenate(list(series.values()))
    lo, hi = float(allv.min()), float(allv.max())
    if hi - lo < 1e-3 * (abs(lo) + 1.0):  # e.g. the per-sample std after standardization: all 1
        lo, hi = (lo + hi) / 2 - 0.5, (lo + hi) / 2 + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    grid = np.linspace(lo, hi, 300)
    for i, (name, v) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        ax.hist(v, bins=edges, density=True, color=color, alpha=0.35, lw=0,
                label=f"{name}: {v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.2f}")
        if v.std() > 1e-3 * (hi - lo):
            try:
                ax.plot(grid, gaussian_kde(_subsample(v, KDE_POINTS))(grid), color=color)
            except np.linalg.LinAlgError:
                pass
    ax.set(xlabel=xlabel, ylabel="density")
    ax.legend(loc="upper right")


def _views(logits: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    return {"raw": logits, "standardized": {k: standardize(v) for k, v in logits.items()}}


@paper_style
def plot_logit_values(logits: dict[str, torch.Tensor], path: str) -> str:
    """Histograms of all logit values, raw and standardized, one colour per model."""
    fig, axes = new_figure(7.0, 2.6, 1, 2)
    for ax, (view, zs) in zip(axes[0], _views(logits).items()):
        _hist(ax, {k: _subsample(v.flatten().numpy(), 200_000) for k, v in zs.items()}, f"{view} logit value")
        ax.set_title(f"logit values, {view}")
    return save_figure(fig, path)


@paper_style
def plot_sample_stats(logits: dict[str, torch.Tensor], path: str) -> str:
    """Per-sample logit mean (left) and standard deviation (right), raw (top) and standardized (bottom)."""
    fig, axes = new_figure(7.0, 4.8, 2, 2)
    for row, (view, zs) in enumerate(_views(logits).items()):
        stats = {k: per_sample_stats(v) for k, v in zs.items()}
        _hist(axes[row, 0], {k: m.numpy() for k, (m, _) in stats.items()}, "per-sample logit mean", bins=40)
        _hist(axes[row, 1], {k: s.numpy() for k, (_, s) in stats.items()}, "per-sample logit std", bins=40)
        axes[row, 0].set_title(f"mean, {view}")
        axes[row, 1].set_title(f"standard deviation, {view}")
    return save_figure(fig, path)


@paper_style
def plot_logit_scatter(logits: dict[str, torch.Tensor], targets: torch.Tensor, path: str) -> str:
    """Student logit against teacher logit (target-class entries highlighted), raw and standardized."""
    (t_name, _), (s_name, _) = list(logits.items())[:2]
    n, c = next(iter(logits.values())).shape
    is_target = torch.zeros(n, c, dtype=torch.bool).scatter_(1, targets[:, None].clamp(0, c - 1), True).flatten()
    pick = torch.from_numpy(_subsample(np.arange(n * c), MAX_POINTS))
    fig, axes = new_figure(7.0, 3.3, 1, 2)
    for ax, (view, zs) in zip(axes[0], _views(logits).items()):
        t, s = zs[t_name].flatten()[pick].numpy(), zs[s_name].flatten()[pick].numpy()
        target = is_target[pick].numpy()
        ax.scatter(t[~target], s[~target], s=3, alpha=0.25, color=COLORS[0], lw=0, label="other classes",
                   rasterized=True)
        ax.scatter(t[target], s[target], s=4, alpha=0.6, color=COLORS[1], lw=0, label="target class",
                   rasterized=True)
        lo, hi = float(min(t.min(), s.min())), float(max(t.max(), s.max()))
        ax.plot([lo, hi], [lo, hi], color="0.3", ls="--", lw=1.0, label="y = x")
        r = _pearson(zs[t_name], zs[s_name])
        ax.set(xlabel=f"{t_name} logit", ylabel=f"{s_name} logit", title=f"{view} (Pearson r = {r:.3f})")
        ax.legend(loc="upper left", markerscale=3)
    return save_figure(fig, path)


@paper_style
def plot_logit_example(logits: dict[str, torch.Tensor], targets: torch.Tensor, path: str, index: int = 0,
                       max_classes: int = 20, class_names: Optional[Sequence[str]] = None) -> str:
    """One sample's logits per class for each model, raw and standardized (the paper's Fig. 1)."""
    first = next(iter(logits.values()))[index]
    classes = torch.argsort(first, descending=True)[:max_classes].sort().values
    names = [str(class_names[i]) if class_names else str(i.item()) for i in classes]
    width = 0.8 / len(logits)
    fig, axes = new_figure(7.0, 2.6, 1, 2)
    for ax, (view, zs) in zip(axes[0], _views(logits).items()):
        for i, (name, z) in enumerate(zs.items()):
            x = np.arange(len(classes)) + (i - (len(zs) - 1) / 2) * width
            ax.bar(x, z[index, classes].numpy(), width=width, color=COLORS[i % len(COLORS)], label=name)
        ax.set_xticks(range(len(classes)), names, rotation=90 if max(map(len, names)) > 3 else 0)
        ax.axhline(0, color="0.3", lw=0.8)
        ax.grid(axis="x", visible=False)
        ax.set(xlabel="class", ylabel="logit", title=f"sample {index} (target {int(targets[index])}), {view}")
        ax.legend(loc="best")
    return save_figure(fig, path)


def save_logit_views(logits: dict[str, torch.Tensor], targets: torch.Tensor, out_dir: str,
                     class_names: Optional[Sequence[str]] = None) -> dict:
    """All logit views as PNGs plus logit_stats.json in out_dir; returns the statistics with the paths."""
    os.makedirs(out_dir, exist_ok=True)
    stats = logit_statistics(logits, targets)
    stats["figures"] = [
        plot_logit_values(logits, os.path.join(out_dir, "logit_values.png")),
        plot_sample_stats(logits, os.path.join(out_dir, "logit_sample_stats.png")),
        plot_logit_scatter(logits, targets, os.path.join(out_dir, "logit_scatter.png")),
        plot_logit_example(logits, targets, os.path.join(out_dir, "logit_example.png"), class_names=class_names),
    ]
    with open(os.path.join(out_dir, "logit_stats.json"), "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=2)
    return stats


# ---------------------------------------------------------------------------------- models
def teacher_student_logits(cfg: CfgNode, student_ckpt: str, teacher_ckpt: Optional[str] = None,
                           max_samples: int = 10000) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[str]]:
    """Teacher (DISTILLER.TEACHER, from teacher_ckpt or DISTILLER.TEACHER_CKPT) and student (DISTILLER.STUDENT
    from student_ckpt) logits on the configured dataset's test split; also returns the class names."""
    from kdlab.data import build_dataloaders, build_datasets
    from kdlab.engine.builder import build_student, build_teacher, select_device
    from kdlab.models import load_weights

    if teacher_ckpt:
        cfg = cfg.clone()
        cfg.defrost()
        cfg.DISTILLER.TEACHER_CKPT = teacher_ckpt
        cfg.freeze()
    splits = build_datasets(cfg, two_views=False)
    device = select_device(cfg)
    teacher = build_teacher(cfg, splits).to(device).eval()
    student = load_weights(build_student(cfg, splits), student_ckpt, what="student checkpoint").to(device).eval()
    _, val_loader, _ = build_dataloaders(cfg, two_views=False, splits=splits)
    vt = splits.val_batch_transform
    logits, targets = collect_logits(
        {"teacher": lambda x: teacher(x)[0], "student": lambda x: student(x)[0]}, val_loader, device,
        batch_transform=vt, max_samples=max_samples,
    )
    return logits, targets, list(splits.class_names)
