"""What a feature method may ask of a model's stages: their channels and the BatchNorms before their ReLUs.

The CIFAR and digits models answer with mdistiller's method names, get_stage_channels() (the
channels of feats: the stem, then each stage) and get_bn_before_relu(); the torchvision wrappers
(kdlab.models.imagenet.torchvision) with the attributes kdlab_stage_channels (the four stage
outputs, no stem, as mdistiller's ImageNet models) and kdlab_bn_before_relu (module paths).
A model with neither is a ConfigError naming the role it was asked to play.
"""

from __future__ import annotations

import torch.nn as nn

from kdlab.errors import ConfigError


def stage_channels(model: nn.Module, who: str = "model") -> list[int]:
    """The model's stage channels, as mdistiller's get_stage_channels() lists them."""
    if hasattr(model, "get_stage_channels"):
        return [int(c) for c in model.get_stage_channels()]
    if hasattr(model, "kdlab_stage_channels"):
        return [int(c) for c in model.kdlab_stage_channels]
    raise ConfigError(f"the {who} ({type(model).__name__}) does not list its stage channels (get_stage_channels)")


def bn_before_relu(model: nn.Module, who: str = "model") -> list[nn.BatchNorm2d]:
    """The BatchNorm modules whose outputs feed the ReLUs after the stages, as mdistiller's get_bn_before_relu()."""
    if hasattr(model, "get_bn_before_relu"):
        return list(model.get_bn_before_relu())
    if hasattr(model, "kdlab_bn_before_relu"):
        return [model.get_submodule(path) for path in model.kdlab_bn_before_relu]
    raise ConfigError(
        f"the {who} ({type(model).__name__}) has no BatchNorm-before-ReLU modules (get_bn_before_relu); "
        "OFD takes its margins from them (mdistiller's ShuffleNets cannot be OFD teachers either)"
    )
