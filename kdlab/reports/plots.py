"""Paper-ready figures: learning curves, method comparison, confusion matrix, per-class bars.

Figures are drawn on matplotlib's Agg canvas through `matplotlib.figure.Figure` (no pyplot,
no display, no global backend switch), inside `PAPER_STYLE`: 8-10 pt fonts at the printed size,
light grids, no top/right spines, 200 dpi PNG.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from typing import Optional

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from kdlab.reports.table import variant_label

PAPER_STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "lines.linewidth": 1.4,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.03,
    "pdf.fonttype": 42,  # embed TrueType: editable text in the PDF a paper uses
}
COLORS = matplotlib.colormaps["tab10"].colors
MAX_LABELLED_CLASSES = 20


def paper_style(fn: Callable) -> Callable:
    """Run a plotting function inside PAPER_STYLE (rc params are read when artists are created)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(PAPER_STYLE):
            return fn(*args, **kwargs)

    return wrapper


def new_figure(width: float, height: float, nrows: int = 1, ncols: int = 1, **kwargs) -> tuple[Figure, np.ndarray]:
    """A Figure (constrained layout) and its axes as a 2-D array."""
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kwargs)


def save_figure(fig: Figure, path: str) -> str:
    """Save fig (format from the extension) creating folders; return the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    return path


def slug(*parts: Optional[str]) -> str:
    """A file-name-safe join of the non-empty parts."""
    text = "_".join(str(p) for p in parts if p)
    return "".join(c if c.isalnum() or c in "-." else "_" for c in text)


def _pair_label(row: dict) -> str:
    return row["student"] if not row["teacher"] else f"{row['teacher']} → {row['student']}"


def _row_labels(rows: Sequence[dict], with_pair: bool = False) -> list[str]:
    """A label per row: the method, plus the teacher/student pair and epochs only where the rows differ in them."""
    several_pairs = with_pair or len({(r["teacher"], r["student"]) for r in rows}) > 1
    several_epochs = len({r["epochs"] for r in rows}) > 1
    labels = []
    for r in rows:
        label = variant_label(r) + (f": {_pair_label(r)}" if several_pairs else "")
        labels.append(label + (f", {r['epochs']} ep" if several_epochs else ""))
    return labels


def _label_colors(labels: Sequence[str]) -> list[tuple]:
    """One colour per distinct method label (the part before ':'), in order of appearance."""
    methods = list(dict.fromkeys(label.split(":")[0].split(",")[0] for label in labels))
    return [COLORS[methods.index(label.split(":")[0].split(",")[0]) % len(COLORS)] for label in labels]


# ---------------------------------------------------------------------------------- runs
def _curve_labels(rows: Sequence[dict]) -> list[str]:
    """Labels for one student's curves: the method, plus the teacher / epochs only where the rows differ."""
    several_teachers = len({r["teacher"] for r in rows if r["teacher"]}) > 1
    several_students = len({r["student"] for r in rows}) > 1
    several_epochs = len({r["epochs"] for r in rows}) > 1
    return [variant_label(r) + (f": {r['student']}" if several_students else "")
            + (f" ← {r['teacher']}" if several_teachers and r["teacher"] else "")
            + (f", {r['epochs']} ep" if several_epochs else "") + f" (n={r['n']})" for r in rows]


@paper_style
def plot_learning_curves(rows: Sequence[dict], path: str, title: str = "") -> str:
    """Loss (log scale) and top-1 per epoch, one line per run: colour = setting, solid = test, dashed = train.

    The train loss is the training objective (cross-entropy plus any distillation terms); the test loss is
    the cross-entropy, so only the test curves compare across methods.
    """
    fig, axes = new_figure(7.0, 3.0, 1, 2)
    ax_loss, ax_acc = axes[0]
    handles = []
    positive = True
    for i, (row, label) in enumerate(zip(rows, _curve_labels(rows))):
        color = COLORS[i % len(COLORS)]  # one colour per row: every setting distinguishable
        handles.append(Line2D([], [], color=color, label=label))
        for run in row["runs"]:
            epochs = [h["epoch"] for h in run.history]
            for ax, key in ((ax_loss, "loss"), (ax_acc, "acc")):
                for split, style in (("test", {"alpha": 0.9}), ("train", {"ls": "--", "alpha": 0.6, "lw": 1.0})):
                    values = [h.get(f"{split}_{key}") for h in run.history]
                    if any(v is not None for v in values):  # older or other-task histories may lack a series
                        ax.plot(epochs, [np.nan if v is None else v for v in values], color=color, **style)
                        positive &= key != "loss" or all(v is None or v > 0 for v in values)
    if positive:
        ax_loss.set_yscale("log")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss (train: training objective)")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles += [Line2D([], [], color="0.3", label="test"), Line2D([], [], color="0.3", ls="--", label="train")]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3))
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


@paper_style
def plot_method_comparison(rows: Sequence[dict], path: str, title: str = "") -> str:
    """Horizontal bars of last-epoch top-1 per setting, mean ± std error bars, values written at the bar ends."""
    means = np.array([r["last_top1_mean"] for r in rows], dtype=float)
    stds = np.array([r["last_top1_std"] or 0.0 for r in rows], dtype=float)
    labels = _row_labels(rows, with_pair=True)
    fig, axes = new_figure(5.5, 0.6 + 0.3 * len(rows))
    ax = axes[0, 0]
    y = np.arange(len(rows))
    ax.barh(y, means, xerr=stds, height=0.65, color=_label_colors(labels),
            error_kw={"capsize": 3, "elinewidth": 1.0, "ecolor": "0.2"})
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.grid(axis="y", visible=False)
    low, high = float(np.min(means - stds)), float(np.max(means + stds))
    span = max(high - low, 1.0)
    # Accuracies of a comparison sit within a few points: start the axis near them, not at 0.
    left = max(0.0, 5.0 * math.floor((low - 0.6 * span) / 5.0))
    ax.set_xlim(left, high + 0.35 * span)
    ax.set_xticks([t for t in ax.get_xticks() if left <= t <= 100.0])
    for yi, m, s, r in zip(y, means, stds, rows):
        ax.text(m + s + 0.03 * span, yi, f"{m:.2f}" + (f" ± {s:.2f}" if r["n"] > 1 else ""), va="center", fontsize=7)
    ax.set_xlabel("test top-1 (%), last epoch, mean ± std over seeds" + (f"  (axis from {left:g})" if left else ""))
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def report_figures(rows: Sequence[dict], out_dir: str, curves: str = "student") -> list[str]:
    """Learning curves per (dataset, student), or per dataset with every run (curves "dataset": teacher and
    students in one figure), and one method comparison per dataset; return the paths."""
    paths = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        in_dataset = [r for r in rows if r["dataset"] == dataset]
        if curves == "dataset":
            paths.append(plot_learning_curves(in_dataset, os.path.join(out_dir, f"curves_{slug(dataset)}.png"),
                                              title=dataset))
        for student in dict.fromkeys(r["student"] for r in in_dataset) if curves == "student" else ():
            group = [r for r in in_dataset if r["student"] == student]
            paths.append(plot_learning_curves(group, os.path.join(out_dir, f"curves_{slug(dataset, student)}.png"),
                                              title=f"{dataset}: {student}"))
        paths.append(plot_method_comparison(in_dataset, os.path.join(out_dir, f"compare_{slug(dataset)}.png"),
                                            title=dataset))
    return paths


# ---------------------------------------------------------------------------------- evaluation
@paper_style
def plot_confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str,
                          title: str = "") -> str:
    """Heat map of the row-normalized confusion matrix (% of each true class); counts written when small."""
    counts = np.asarray(matrix, dtype=np.int64)
    n = counts.shape[0]
    support = counts.sum(1, keepdims=True)
    percent = np.divide(100.0 * counts, support, out=np.zeros(counts.shape), where=support > 0)
    size = float(np.clip(0.32 * n + 1.8, 3.2, 8.0))
    fig, axes = new_figure(size + 0.8, size)
    ax = axes[0, 0]
    ax.grid(False)
    ax.spines[:].set_visible(True)
    image = ax.imshow(percent, cmap="Blues", vmin=0, vmax=100, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="% of the true class")
    if n <= MAX_LABELLED_CLASSES:
        ax.set_xticks(range(n), class_names, rotation=90 if max(map(len, class_names)) > 3 else 0)
        ax.set_yticks(range(n), class_names)
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if percent[i, j] > 60 else "0.15")
    ax.set(xlabel="predicted class", ylabel="true class", title=title or "confusion matrix")
    return save_figure(fig, path)


@paper_style
def plot_per_class(values: dict, path: str, ylabel: str, title: str = "", top: float = 100.0) -> str:
    """Bars per class (mean as a dashed line); with many classes, the values sorted as a profile."""
    names = [k for k, v in values.items() if v is not None]
    vals = np.array([values[k] for k in names], dtype=float)
    mean = float(vals.mean()) if len(vals) else 0.0
    if len(names) <= 2 * MAX_LABELLED_CLASSES:
        fig, axes = new_figure(max(3.5, 0.22 * len(names) + 1.2), 2.6)
        ax = axes[0, 0]
        ax.bar(range(len(names)), vals, color=COLORS[0], width=0.75)
        ax.set_xticks(range(len(names)), names, rotation=90 if max(map(len, names), default=0) > 3 else 0)
        ax.set_xlabel("class")
        ax.grid(axis="x", visible=False)
    else:
        fig, axes = new_figure(5.0, 2.6)
        ax = axes[0, 0]
        order = np.sort(vals)[::-1]
        ax.fill_between(np.arange(len(order)), order, color=COLORS[0], alpha=0.5, lw=0)
        ax.plot(order, color=COLORS[0])
        ax.set_xlabel(f"classes, sorted ({len(order)})")
    ax.axhline(mean, color="0.3", ls="--", lw=1.0, label=f"mean over classes {mean:.2f}")
    ax.set(ylabel=ylabel, title=title, ylim=(0, top))
    ax.legend(loc="lower right", frameon=True, framealpha=0.9, edgecolor="none")
    return save_figure(fig, path)


def _as_named(values, class_names: Sequence[str]) -> dict:
    if isinstance(values, dict):
        return values
    return {str(class_names[i]) if i < len(class_names) else str(i): v for i, v in enumerate(values)}


def save_eval_plots(report: dict, out_dir: str) -> list[str]:
    """The plots of a tools/eval.py report: confusion matrix and per-class accuracy (or IoU); return paths."""
    names = [str(n) for n in report.get("class_names") or []]
    model = report.get("model", "")
    title = f"{model} on {report.get('dataset', '')}".strip() if model else ""
    paths = []
    if report.get("confusion_matrix") is not None:
        matrix = report["confusion_matrix"]
        names = names or [str(i) for i in range(len(matrix))]
        paths.append(plot_confusion_matrix(matrix, names, os.path.join(out_dir, "confusion_matrix.png"), title))
    if report.get("per_class_iou") is not None:
        iou = _as_named(report["per_class_iou"], names)
        percent = max((v for v in iou.values() if v is not None), default=0) > 1  # IoU in % or as a fraction
        paths.append(plot_per_class(iou, os.path.join(out_dir, "per_class_iou.png"), "IoU (%)" if percent else "IoU",
                                    title, top=100.0 if percent else 1.0))
    elif report.get("per_class_acc") is not None:
        acc = _as_named(report["per_class_acc"], names)
        paths.append(plot_per_class(acc, os.path.join(out_dir, "per_class_accuracy.png"), "accuracy (%)", title))
    return paths
