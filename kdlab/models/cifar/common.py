"""Pieces shared by the CIFAR model zoo: registration, initialization, stage running, channel shuffle."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from kdlab.errors import ConfigError
from kdlab.models.build import MODELS
from kdlab.models.checkpoint import load_weights

Tensor = torch.Tensor


def build_variant(
    cls: type[nn.Module],
    arch: Mapping[str, Any],
    num_classes: int = 100,
    pretrained: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build cls(**arch, **kwargs), then load `pretrained` (a local file) strictly.

    kwargs are the class's other arguments (in_channels, and e.g. drop_rate for WideResNet);
    anything else is a ConfigError that lists what the model takes.
    """
    accepted = [k for k in inspect.signature(cls).parameters if k not in arch and k != "num_classes"]
    unknown = sorted(k for k in kwargs if k not in accepted)
    if unknown:
        raise ConfigError(
            f"{cls.__name__} takes no model argument {', '.join(unknown)} "
            f"(it takes num_classes, pretrained, {', '.join(accepted)})"
        )
    model = cls(num_classes=num_classes, **arch, **kwargs)
    if pretrained:
        load_weights(model, pretrained, what="pretrained weights")
    return model


def register_variants(cls: type[nn.Module], variants: Mapping[str, Mapping[str, Any]]) -> None:
    """Register each name as a builder of cls with that variant's architecture arguments."""
    for name, arch in variants.items():
        MODELS.register(name, functools.partial(build_variant, cls, dict(arch)))


def init_like_mdistiller(
    model: nn.Module, linear_std: float | None = None, zero_linear_bias: bool = False
) -> None:
    """mdistiller's initialization: He-normal (fan_out) convs, zero conv biases, optional N(0, std) Linear."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(m.weight, 0.0, linear_std)
            if zero_linear_bias or linear_std is not None:
                nn.init.zeros_(m.bias)


def run_stage(stage: nn.Sequential, x: Tensor) -> tuple[Tensor, Tensor]:
    """Run blocks that each return (out, preact); return the last block's pair."""
    preact = x
    for block in stage:
        x, preact = block(x)
    return x, preact


def run_stages(x: Tensor, stages: list[nn.Module]) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Run the stages after the stem output x; feats and preact_feats start with x (mdistiller's order)."""
    feats, preacts = [x], [x]
    for stage in stages:
        x, preact = run_stage(stage, x)
        feats.append(x)
        preacts.append(preact)
    return x, feats, preacts


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """ShuffleNet's channel shuffle: [N, g*c, H, W] -> interleave the g groups."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """A bias-free conv ('same' padding) followed by BatchNorm, as a list to splice into a Sequential."""
    return [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]


def global_pool(x: Tensor, adaptive: bool = False) -> Tensor:
    """Global average pooling to [N, C] for any input size, bit-identical to mdistiller's at 32x32.

    mdistiller pools with a fixed window (AvgPool2d(8) etc.), here sized to the input, or with
    AdaptiveAvgPool2d(1) (`adaptive`); the two kernels round differently in float32.
    """
    pooled = (
        nn.functional.adaptive_avg_pool2d(x, 1) if adaptive else nn.functional.avg_pool2d(x, x.shape[-2:])
    )
    return torch.flatten(pooled, 1)
