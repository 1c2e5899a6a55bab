"""Segmentation prediction figures: image | ground truth | teacher | student, masks in VOC's palette.

One PNG per validation image (tools/eval.py --plots DIR on a segmentation dataset); the teacher panel is
there only when a teacher was given. Masks are drawn pixel for pixel (nearest interpolation), so every
mask pixel of the figure is a VOC palette colour (255, the ignore label, in the devkit's cream).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from kdlab.reports.plots import new_figure, paper_style, save_figure

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def voc_palette() -> np.ndarray:
    """VOC's 256 x 3 uint8 colour map (the devkit's bit-interleaved one: 0 black, 1 (128, 0, 0), ...)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, rgb = i, [0, 0, 0]
        for j in range(8):
            for channel in range(3):
                rgb[channel] |= ((c >> channel) & 1) << (7 - j)
            c >>= 3
        palette[i] = rgb
    return palette


def colorize(mask) -> np.ndarray:
    """An H x W array of class indices (0..255) as an H x W x 3 uint8 image in VOC's palette."""
    return voc_palette()[np.asarray(mask, dtype=np.int64) % 256]


def normalization_of(transform) -> tuple[Sequence[float], Sequence[float]]:
    """(mean, std) of the Normalize step inside a (nested) Compose; ImageNet's when there is none."""
    stack = [transform]
    while stack:
        t = stack.pop()
        if type(t).__name__ == "Normalize" and hasattr(t, "mean") and hasattr(t, "std"):
            return list(t.mean), list(t.std)
        stack.extend(getattr(t, "transforms", None) or [])
    return IMAGENET_MEAN, IMAGENET_STD


def display_image(image, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A normalized C x H x W tensor or array back to H x W x 3 in [0, 1] (a single channel shown grey)."""
    x = np.asarray(image, dtype=np.float32)
    c = x.shape[0]
    x = x * np.resize(np.asarray(std, np.float32), c).reshape(c, 1, 1)
    x = x + np.resize(np.asarray(mean, np.float32), c).reshape(c, 1, 1)
    x = np.clip(x.transpose(1, 2, 0), 0.0, 1.0)
    return np.repeat(x, 3, axis=2) if c == 1 else x[..., :3]


@paper_style
def plot_prediction(image: np.ndarray, target, predictions: dict, path: str, title: str = "") -> str:
    """One row: the image, the ground-truth mask, then each predicted mask (titles: the keys of predictions)."""
    panels = [("image", image), ("ground truth", colorize(target))]
    panels += [(name, colorize(mask)) for name, mask in predictions.items()]
    height, width = image.shape[:2]
    fig, axes = new_figure(2.2 * len(panels), 2.2 * height / width + 0.4, 1, len(panels))
    for ax, (name, pixels) in zip(axes[0], panels):
        ax.imshow(pixels, interpolation="nearest")
        ax.set_title(name)
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def save_prediction_figures(samples: list[dict], out_dir: str, mean, std, title: str = "") -> list[str]:
    """prediction_00.png ... for samples {"image": C x H x W normalized, "target": H x W, "predictions":
    {panel title: H x W}}; return the paths."""
    return [
        plot_prediction(display_image(s["image"], mean, std), s["target"], s["predictions"],
                        os.path.join(out_dir, f"prediction_{k:02d}.png"), title)
        for k, s in enumerate(samples)
    ]
