"""DATASET.TRAIN_TRANSFORMS / TEST_TRANSFORMS: torchvision.transforms.v2 pipelines written in the config.

An entry is a transform's class name, alone or as a one-key mapping to its keyword arguments (or, not a
mapping, to its first argument: `{CenterCrop: 224}`):

    TRAIN_TRANSFORMS:
      - RandomHorizontalFlip
      - ColorJitter: {brightness: 0.4, contrast: 0.4}
      - RandomRotation: {degrees: 15}

and on the command line the same as a Python literal:
`DATASET.TRAIN_TRANSFORMS "['RandomHorizontalFlip', {'ColorJitter': {'brightness': 0.4}}]"`.
A string value of an `interpolation` argument names an InterpolationMode (`bilinear`, `nearest`, ...).
`{RandomApply: {transforms: [entries], p: 0.3}}` applies the inner entries together with probability p.

A non-empty list replaces the dataset's built-in augmentation (TEST_TRANSFORMS: its evaluation resizing);
kdlab then finishes every image with `FitSize` (a resize to the working size only where the list left
another size, so batches stack) and the conversion to float + normalization. The transforms are
torchvision's own, so a segmentation image and its mask (tv_tensors.Mask) are transformed jointly:
geometric ones move both (the mask with nearest-neighbour), colour ones touch the image only.
Every entry is built at config load time: an unknown name or argument is a one-line ConfigError.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF
from yacs.config import CfgNode

from kdlab.config import hooks
from kdlab.errors import ConfigError
from kdlab.registry import closest_names

KEYS = ("DATASET.TRAIN_TRANSFORMS", "DATASET.TEST_TRANSFORMS")
# Containers and conversions kdlab adds itself, batch-level mixing that needs the labels, box/keypoint tools.
EXCLUDED = {
    "Compose", "RandomApply", "RandomChoice", "RandomOrder", "Lambda", "Transform", "ToImage", "ToPILImage",
    "ToPureTensor", "ToTensor", "PILToTensor", "ToDtype", "ConvertImageDtype", "Normalize", "MixUp", "CutMix",
    "LinearTransformation", "FiveCrop", "TenCrop", "ClampBoundingBoxes", "ClampKeyPoints", "SanitizeBoundingBoxes",
    "SanitizeKeyPoints", "ConvertBoundingBoxFormat", "SetClampingMode", "UniformTemporalSubsample", "RandomIoUCrop",
}  # fmt: skip
TRANSFORM_NAMES = sorted(
    n for n in dir(v2)
    if inspect.isclass(getattr(v2, n)) and issubclass(getattr(v2, n), v2.Transform) and n not in EXCLUDED
)  # fmt: skip


FIRST = object()  # stands for the transform's first parameter, whatever its name


def _entry(key: str, i: int, entry: Any) -> tuple[str, dict]:
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, dict) and len(entry) == 1:
        name, kwargs = next(iter(entry.items()))
        kwargs = {} if kwargs is None else kwargs
        if isinstance(kwargs, dict):
            return str(name), dict(kwargs)
        return str(name), {FIRST: kwargs}  # {CenterCrop: 224}: the first argument
    raise ConfigError(
        f"{key}[{i}]: expected a transform name or a one-key mapping {{Name: {{argument: value}}}}, got {entry!r}"
    )


def _kwargs(kwargs: dict) -> dict:
    out = {}
    for k, v in kwargs.items():
        if k == "interpolation" and isinstance(v, str):
            v = InterpolationMode(v.lower())
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


def build_transform(key: str, i: int, entry: Any, mask_fill: int | None = None) -> v2.Transform:
    """One config entry -> the v2 transform, or a one-line ConfigError naming the key, the entry and the fix.

    mask_fill: for segmentation, the value padded/rotated-in mask pixels get where the entry sets no `fill`.
    """
    name, kwargs = _entry(key, i, entry)
    if name == "RandomApply":
        return _random_apply(key, i, kwargs, mask_fill)
    if name not in TRANSFORM_NAMES:
        near = closest_names(name, TRANSFORM_NAMES)
        hint = f"; did you mean {', '.join(near)}?" if near else f"; known: {', '.join(TRANSFORM_NAMES)}"
        raise ConfigError(f"{key}[{i}]: unknown transform {name!r}{hint}")
    cls = getattr(v2, name)
    params = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    if FIRST in kwargs:
        kwargs = {params[0]: kwargs.pop(FIRST)} if params else kwargs
    for arg in kwargs:
        if arg not in params:
            near = closest_names(str(arg), params)
            hint = f"did you mean {', '.join(near)}? " if near else ""
            raise ConfigError(f"{key}[{i}]: {name} takes no argument {arg!r}; {hint}(it takes {', '.join(params)})")
    kwargs = _kwargs(kwargs)
    if mask_fill is not None and "fill" in params and "fill" not in kwargs:
        kwargs["fill"] = {tv_tensors.Image: 0, tv_tensors.Mask: mask_fill, "others": 0}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}[{i}]: {name}({_show(kwargs)}) is refused by torchvision: {exc}") from None


def _random_apply(key: str, i: int, kwargs: dict, mask_fill: int | None) -> v2.Transform:
    """{RandomApply: {transforms: [entries], p: 0.3}}: the inner entries, all applied with probability p."""
    inner = kwargs.get("transforms")
    extra = sorted(str(k) for k in kwargs if k not in ("transforms", "p"))
    if not isinstance(inner, (list, tuple)) or not inner or extra:
        raise ConfigError(
            f"{key}[{i}]: RandomApply takes {{transforms: [a non-empty list of entries], p: probability}}, "
            f"got {kwargs!r}"
        )
    p = float(kwargs.get("p", 0.5))
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"{key}[{i}]: RandomApply p must be in [0, 1], got {p}")
    return v2.RandomApply([build_transform(key, i, e, mask_fill) for e in inner], p=p)


def _show(kwargs: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def build_transforms(key: str, entries: Sequence, mask_fill: int | None = None) -> list[v2.Transform]:
    return [build_transform(key, i, e, mask_fill) for i, e in enumerate(entries)]


NORMALIZE_CHOICES = ("auto", "dataset", "imagenet")


def check_transforms(cfg: CfgNode) -> None:
    """Load-time validator: every entry of both lists names a transform and arguments it takes; DATASET.NORMALIZE."""
    for key in KEYS:
        group, leaf = key.split(".")
        build_transforms(key, cfg[group][leaf])
    norm = cfg.DATASET.NORMALIZE
    if norm not in NORMALIZE_CHOICES:
        near = closest_names(str(norm), list(NORMALIZE_CHOICES))
        raise ConfigError(f"DATASET.NORMALIZE: unknown value {norm!r}; use {' | '.join(NORMALIZE_CHOICES)}"
                          + (f" (did you mean {near[0]}?)" if near else ""))
    if norm == "imagenet" and cfg.DATASET.TYPE == "digits":
        raise ConfigError("DATASET.NORMALIZE imagenet: digits images have one channel; use dataset or auto")


hooks.register_validator(check_transforms)


class FitSize(v2.Transform):
    """Resize to size x size only where the input has another size (masks nearest-neighbour), so batches stack."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"resize": tuple(v2.query_size(flat_inputs)) != (self.size, self.size)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return TF.resize(inpt, [self.size, self.size], antialias=True) if params["resize"] else inpt

    def extra_repr(self) -> str:
        return f"size={self.size}"


def config_pipeline(
    key: str, entries: Sequence, size: int, mean: Sequence[float], std: Sequence[float], mask_fill: int | None = None
) -> v2.Compose:
    """The configured transforms, then FitSize(size), float conversion and normalization."""
    return v2.Compose([
        *build_transforms(key, entries, mask_fill),
        FitSize(size),
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: None, "others": None}
                   if mask_fill is not None else torch.float32, scale=True),
        v2.Normalize(list(mean), list(std)),
    ])  # fmt: skip
