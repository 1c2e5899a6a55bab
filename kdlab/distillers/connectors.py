"""Modules that map student features onto teacher features, and the shape probe that sizes them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdlab.distillers.base import DatasetFacts
from kdlab.errors import ConfigError


def probe_size(key: str, configured: Sequence[int], facts: DatasetFacts) -> tuple[int, int]:
    """The (H, W) to probe models with: `configured` (the config key `key`) if set, else the dataset's input size."""
    if configured:
        if len(configured) != 2:
            raise ConfigError(f"{key} must be [H, W] or empty (the dataset's input size), got {list(configured)}")
        return int(configured[0]), int(configured[1])
    return int(facts.input_size[0]), int(facts.input_size[1])


def in_channels(model: nn.Module) -> int:
    """Input channels of a conv net: those of its first Conv2d (3 if it has none)."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return first.in_channels if first is not None else 3


@torch.no_grad()
def probe_features(model: nn.Module, input_size: Sequence[int]) -> dict:
    """Run `model` once on a zero batch of 2 in eval mode (no BatchNorm statistics change); return its feats dict."""
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        x = torch.zeros(2, in_channels(model), *input_size, device=param.device if param is not None else None)
        _, feats = model(x)
    finally:
        model.train(was_training)
    return feats


def feature_shapes(model: nn.Module, input_size: Sequence[int]) -> list[torch.Size]:
    """Shapes of feats["feats"] (stem, then each stage) for a batch of 2 at `input_size`."""
    return [f.shape for f in probe_features(model, input_size)["feats"]]


def pick_feature(feats: dict, spec: int | str, key: str, who: str) -> torch.Tensor:
    """feats["feats"][spec] for an int, feats[spec] for a name (e.g. "pooled_feat"); a ConfigError otherwise."""
    if isinstance(spec, str):
        value = feats.get(spec)
        if not isinstance(value, torch.Tensor) or value.dim() not in (2, 4):
            names = sorted(k for k, v in feats.items() if isinstance(v, torch.Tensor) and v.dim() in (2, 4))
            raise ConfigError(
                f"{key}: {spec!r} is not a feature of the {who}; use a layer index into feats['feats'] "
                f"(0 = stem, then each stage) or one of {names}"
            )
        return value
    if isinstance(spec, bool) or not isinstance(spec, int):
        raise ConfigError(f"{key}: {spec!r} must be a layer index (int) or a feature name such as 'pooled_feat'")
    shapes = [f.shape for f in feats["feats"]]
    pick_layer(shapes, spec, key, who)
    return feats["feats"][spec]


def pick_layer(shapes: list[torch.Size], index: int, key: str, who: str) -> torch.Size:
    """shapes[index], or a ConfigError naming the key and the valid indices."""
    if not -len(shapes) <= index < len(shapes):
        raise ConfigError(
            f"{key}: layer {index} does not exist; the {who} has {len(shapes)} feature maps "
            f"(indices 0..{len(shapes) - 1}: stem, then each stage), shapes {[tuple(s[1:]) for s in shapes]}"
        )
    return shapes[index]


class ConvReg(nn.Module):
    """mdistiller's FitNet regressor: a conv chosen by the spatial ratio, then BatchNorm and ReLU.

    Student H = 2 * teacher H: 3x3 stride-2 conv; H / 2: 4x4 stride-2 transposed conv; H >= teacher H:
    a valid conv of kernel (1 + dH, 1 + dW). Any other pair of shapes cannot be connected.
    """

    def __init__(self, s_shape: Sequence[int], t_shape: Sequence[int], use_relu: bool = True) -> None:
        super().__init__()
        if len(s_shape) != 4 or len(t_shape) != 4:
            raise ConfigError(
                f"ConvReg connects 4-D feature maps, got student {tuple(s_shape)}, teacher {tuple(t_shape)}"
            )
        _, s_c, s_h, s_w = s_shape
        _, t_c, t_h, t_w = t_shape
        if s_h == 2 * t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif s_h * 2 == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h and s_w >= t_w:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise ConfigError(
                f"ConvReg cannot map student features {tuple(s_shape[1:])} to teacher features {tuple(t_shape[1:])} "
                "(student H must be 2x, 1/2x or >= the teacher's)"
            )
        self.bn = nn.BatchNorm2d(t_c)
        self.relu = nn.ReLU(inplace=True)
        self.use_relu = use_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.relu(x) if self.use_relu else x


class FeatureConnector(nn.Module):
    """1x1 conv + BatchNorm to the teacher's channels, then resize to the teacher's H x W.

    The spatial size is taken from the teacher feature at run time: adaptive average pooling when the
    student map is larger, bilinear interpolation when it is smaller, nothing when they are equal.
    With batch_norm=False the conv has a bias and no BatchNorm follows, equal channel counts get no conv at
    all, and the resize is always bilinear: the Elec475 VOC seed's align layers, which interpolate the student
    map to the teacher's size and then apply the 1x1 conv (the two commute).
    """

    def __init__(self, student_channels: int, teacher_channels: int, batch_norm: bool = True) -> None:
        super().__init__()
        self.bilinear = not batch_norm
        if batch_norm:
            self.conv = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)
            self.bn = nn.BatchNorm2d(teacher_channels)
        else:
            same = student_channels == teacher_channels
            self.conv = nn.Identity() if same else nn.Conv2d(student_channels, teacher_channels, kernel_size=1)
            self.bn = nn.Identity()

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        x = self.bn(self.conv(x))
        if self.bilinear and tuple(x.shape[-2:]) != tuple(size):
            return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        return resize_to(x, size)


class VectorConnector(nn.Module):
    """Maps an N x D student vector (e.g. feats["pooled_feat"]) to the teacher's N x D': a Linear layer
    when the sizes differ, nothing when they are equal (cifar10_distillation's penultimate-vector MSE)."""

    def __init__(self, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        self.linear = nn.Identity() if student_dim == teacher_dim else nn.Linear(student_dim, teacher_dim)

    def forward(self, x: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        return self.linear(x.flatten(1))


def resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Pool down (adaptive average) or interpolate up (bilinear) a N x C x H x W map to `size`."""
    size = tuple(size)
    if tuple(x.shape[-2:]) == size:
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def check_connectable(s_shape: torch.Size, t_shape: torch.Size, where: str) -> None:
    """FeatureConnector needs two 4-D maps whose spatial sizes differ by pooling or upsampling in both axes alike."""
    if len(s_shape) != 4 or len(t_shape) != 4:
        raise ConfigError(
            f"{where}: cannot connect student features {tuple(s_shape[1:])} to teacher features "
            f"{tuple(t_shape[1:])}; both must be C x H x W maps"
        )
    (s_h, s_w), (t_h, t_w) = s_shape[-2:], t_shape[-2:]
    if (s_h - t_h) * (s_w - t_w) < 0:
        raise ConfigError(
            f"{where}: cannot connect student features {tuple(s_shape[1:])} to teacher features "
            f"{tuple(t_shape[1:])}; the student map is larger in one axis and smaller in the other"
        )
