"""torchvision's segmentation models with kdlab's (logits, feats) contract, read through hooks.

The returned module *is* torchvision's model (same state-dict keys, so torchvision's files load
unchanged), built with weights=None, weights_backbone=None and aux_loss=False: kdlab downloads only
named `pretrained` weights (below) and trains no auxiliary head. Forward hooks record the backbone's
stem and stage outputs, and a hook on the model turns torchvision's {"out": logits} into (logits, feats). Call the model
(`model(x)`), not `model.forward(x)`, which skips hooks.

feats["feats"]: ResNet-50 backbones (dilated, output stride 8): relu (/2), layer1 (/4), layer2 (/8),
layer3 (/8), layer4 (/8). MobileNetV3-Large backbones (dilated, output stride 16): features 0 (/2),
3 (/4), 6 (/8), 12 (/16), 16 (/16, the 960-channel map the head reads). torchvision's ReLUs work in
place, so feats["preact_feats"] is the same list.

`pretrained` is a local file (torchvision's, or a kdlab/mdistiller checkpoint of this model) or a
torchvision weights name such as COCO_WITH_VOC_LABELS_V1, read from the torch hub cache; when it
is not there it is downloaded there with a progress bar, as torchvision does, unless KDLAB_OFFLINE=1,
where the error names the file to download and where to put it. The auxiliary-head
weights in torchvision's files are dropped; the class layer is replaced (freshly initialized)
when num_classes differs from the file's.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from kdlab.errors import ConfigError
from kdlab.models.build import MODELS
from kdlab.models.checkpoint import load_weights
from kdlab.models.imagenet.torchvision import _pretrained_state as pretrained_state


@dataclass(frozen=True)
class SegTaps:
    """Module paths of the feature taps and of the 1x1 class convolutions of a torchvision segmentation model."""

    stem: str
    stages: tuple[str, ...]
    heads: tuple[str, ...]


_RESNET = SegTaps("backbone.relu", tuple(f"backbone.layer{i}" for i in range(1, 5)), heads=("classifier.4",))
_MOBILENET = SegTaps("backbone.0", ("backbone.3", "backbone.6", "backbone.12", "backbone.16"), heads=("classifier.4",))

SEGMENTATION_MODELS: dict[str, SegTaps] = {
    "fcn_resnet50": _RESNET,
    "deeplabv3_resnet50": _RESNET,
    "deeplabv3_mobilenet_v3_large": _MOBILENET,
    "lraspp_mobilenet_v3_large": SegTaps(
        _MOBILENET.stem, _MOBILENET.stages, heads=("classifier.low_classifier", "classifier.high_classifier")
    ),
}
AUX_PREFIX = "aux_classifier."


def build_torchvision_segmentation(
    name: str, num_classes: int = 21, pretrained: str | None = None, **kwargs: Any
) -> nn.Module:
    """torchvision's segmentation `name` (no weights, no aux head) with kdlab's output contract."""
    taps = SEGMENTATION_MODELS[name]
    state = None
    if pretrained:
        state, _ = pretrained_state(name, pretrained)
        state = OrderedDict((k, v) for k, v in state.items() if not k.startswith(AUX_PREFIX))
    head_key = f"{taps.heads[0]}.weight"
    file_classes = state[head_key].shape[0] if state is not None and head_key in state else num_classes
    if not name.startswith("lraspp"):
        kwargs.setdefault("aux_loss", False)
    try:
        model = torchvision.models.get_model(
            name, weights=None, weights_backbone=None, num_classes=file_classes, **kwargs
        )
    except TypeError as exc:
        raise ConfigError(f"torchvision's {name} does not take these model arguments: {exc}") from None
    if state is not None:
        load_weights(model, state, what=f"pretrained weights {pretrained} for {name}")
    if file_classes != num_classes:
        for path in taps.heads:
            _replace_class_conv(model, path, num_classes)
    return attach_segmentation_hooks(model, taps)


def _replace_class_conv(model: nn.Module, path: str, num_classes: int) -> None:
    parent, _, child = path.rpartition(".")
    owner = model.get_submodule(parent)
    old = getattr(owner, child)
    setattr(owner, child, nn.Conv2d(old.in_channels, num_classes, kernel_size=1))


def attach_segmentation_hooks(model: nn.Module, taps: SegTaps) -> nn.Module:
    """Make model(x) return (logits N x C x H x W, {"feats", "preact_feats", "pooled_feat"})."""
    model.kdlab_seg_taps = taps
    for path in (taps.stem, *taps.stages):
        model.get_submodule(path).register_forward_hook(_keep_output)
    model.register_forward_hook(_pack_outputs)
    return model


def _keep_output(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
    module._kdlab_tap = output


def _pack_outputs(model: nn.Module, args: tuple, output: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    taps = model.kdlab_seg_taps
    feats = [model.get_submodule(p).__dict__.pop("_kdlab_tap") for p in (taps.stem, *taps.stages)]
    pooled = F.adaptive_avg_pool2d(feats[-1], 1).flatten(1)
    return output["out"], {"feats": feats, "preact_feats": list(feats), "pooled_feat": pooled}


for _name in SEGMENTATION_MODELS:
    MODELS.register(_name, functools.partial(build_torchvision_segmentation, _name))
