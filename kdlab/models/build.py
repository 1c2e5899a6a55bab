"""The model registry and build_model().

Every registered builder is called as `builder(num_classes=..., **kwargs)` and returns an
nn.Module whose forward(x) returns (logits, feats) with feats a dict holding
"feats" (stem output, then each stage's output), "preact_feats" (the same before the last
ReLU where that exists) and "pooled_feat" (the vector fed to the classifier).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch.nn as nn

from kdlab.config import hooks
from kdlab.registry import Registry

MODELS = Registry("model")
# The reference code's ImageNet model names (used by its imagenet YAML files) -> kdlab names.
# "MobileNetV2" is logit-standardization-KD's name for mdistiller's MobileNetV1 layout (its r50_mv2
# files are written for that network; see kdlab/models/imagenet/mobilenetv1.py); torchvision's
# MobileNetV2 is "mobilenet_v2".
IMAGENET_ALIASES = {
    "ResNet18": "resnet18",
    "ResNet34": "resnet34",
    "ResNet50": "resnet50",
    "ResNet101": "resnet101",
    "MobileNetV2": "MobileNetV1",
}
# mdistiller's Tiny-ImageNet model names that build another network than the CIFAR one of that name
# (its tiny_imagenet_model_dict: ResNet18 and ShuffleV2 are the CIFAR models, MobileNetV2 is not).
TINY_IMAGENET_ALIASES = {"MobileNetV2": "mobilenetv2_tinyimagenet"}
IMAGENET_SCALE_DATASETS = ("imagenet", "imagenette")
DATASET_ALIASES = {
    **{name: IMAGENET_ALIASES for name in IMAGENET_SCALE_DATASETS},
    "tiny_imagenet": TINY_IMAGENET_ALIASES,
}
for _key in ("DISTILLER.STUDENT", "DISTILLER.TEACHER"):
    hooks.register_names(_key, MODELS.names, tuple(IMAGENET_ALIASES))


def resolve_model_name(name: str, dataset_type: str = "") -> str:
    """Map the reference code's model names to kdlab's for the datasets where they mean another network."""
    alias = DATASET_ALIASES.get(dataset_type, {}).get(name)
    return alias if alias is not None and alias in MODELS else name


def build_model(name: str, num_classes: int, pretrained: str | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered model; `pretrained` is a local file or a torchvision weights name."""
    builder = MODELS.get(name)
    if pretrained and "pretrained" not in inspect.signature(builder).parameters:  # e.g. the digits networks
        from kdlab.models.checkpoint import load_weights

        return load_weights(builder(num_classes=num_classes, **kwargs), pretrained, what="pretrained weights")
    if pretrained:
        kwargs["pretrained"] = pretrained
    return builder(num_classes=num_classes, **kwargs)
