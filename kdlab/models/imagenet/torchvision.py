"""ImageNet-scale backbones built by torchvision itself, returning kdlab's (logits, feats) through hooks.

The returned module *is* torchvision's model (same class, same state-dict keys, so torchvision
files load unchanged); forward hooks record the stem and stage outputs and the classifier's
input, and a hook on the model turns its output into (logits, feats). Call the model
(`model(x)`), not `model.forward(x)`, which skips hooks. feats["feats"] is the stem output then
the last block of each resolution (/4, /8, /16, /32); for vit_b_16 the patch embedding then the
token outputs of encoder blocks 3, 6, 9 and 12. feats["preact_feats"] is the same list, except for
the ResNets, whose stage entries are the last block's sum before its final ReLU (that ReLU is made
out-of-place to keep it; torchvision's work in place), as mdistiller's ImageNet ResNets return.
For OFD, the ResNets and mobilenet_v2 also carry `kdlab_stage_channels` (the four stage outputs,
no stem, as mdistiller's ImageNet models' get_stage_channels) and `kdlab_bn_before_relu` (module
paths: the ResNets' last BatchNorm of layer2..layer4's last block, as mdistiller's; mobilenet_v2's
projecting BatchNorm of each stage's last block); kdlab.models.stages reads them.

The CNNs take any input of at least 32x32. vit_b_16 is built for one size: pass `image_size`
(default 224, or the named weights' size); pretrained position embeddings are resized to it.

`pretrained` names torchvision weights (IMAGENET1K_V1, DEFAULT, ...) or a local file; named weights are read
from the torch hub cache ($TORCH_HOME/hub/checkpoints, torchvision's file name) and downloaded there with a
progress bar when missing, unless KDLAB_OFFLINE=1 (then the error names the file and the folder). The
classifier is replaced by a fresh one when the dataset's class count differs from the weights'.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn as nn
import torchvision
from torchvision.models import WeightsEnum, get_model_weights
from torchvision.models.vision_transformer import interpolate_embeddings

from kdlab.errors import CheckpointError, ConfigError
from kdlab.models.build import MODELS
from kdlab.models.checkpoint import load_state_dict_file, load_weights

log = logging.getLogger("kdlab")
OFFLINE_ENV = "KDLAB_OFFLINE"


@dataclass(frozen=True)
class Taps:
    """Where a torchvision model's features are read: module paths inside the model."""

    stem: str
    stages: tuple[str, ...]
    head: str  # the final nn.Linear, replaced when num_classes differs from the weights'
    pooled: str  # the module whose input is pooled_feat


_RESNET = Taps("relu", ("layer1", "layer2", "layer3", "layer4"), head="fc", pooled="fc")


def _features(stem: int, *stages: int, head: str, pooled: str = "classifier") -> Taps:
    return Taps(f"features.{stem}", tuple(f"features.{i}" for i in stages), head=head, pooled=pooled)


BACKBONES: dict[str, Taps] = {
    **{
        name: _RESNET
        for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2")
    },
    "mobilenet_v2": _features(0, 3, 6, 13, 17, head="classifier.1"),
    "mobilenet_v3_small": _features(0, 1, 3, 8, 11, head="classifier.3"),
    "mobilenet_v3_large": _features(0, 3, 6, 12, 15, head="classifier.3"),
    "efficientnet_b0": _features(0, 2, 3, 5, 7, head="classifier.1"),
    "convnext_tiny": _features(0, 1, 3, 5, 7, head="classifier.2", pooled="classifier.2"),
    "vit_b_16": Taps(
        "conv_proj",
        tuple(f"encoder.layers.encoder_layer_{i}" for i in (2, 5, 8, 11)),
        head="heads.head",
        pooled="heads",
    ),
}


def build_torchvision(
    name: str, num_classes: int = 1000, pretrained: str | None = None, **kwargs: Any
) -> nn.Module:
    """torchvision's `name` with kdlab's output contract; `pretrained` is a local file or a weights name."""
    taps = BACKBONES[name]
    state, weights = _pretrained_state(name, pretrained) if pretrained else (None, None)
    if weights is not None and name.startswith("vit_"):  # e.g. the SWAG weights are for 384x384
        kwargs.setdefault("image_size", weights.meta["min_size"][0])
    head_key = f"{taps.head}.weight"
    file_classes = state[head_key].shape[0] if state is not None and head_key in state else num_classes
    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=file_classes, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"torchvision's {name} does not take these model arguments: {exc}") from None
    if state is not None:
        load_weights(model, _fit_position_embedding(model, state), what=f"pretrained weights for {name}")
    if file_classes != num_classes:
        _replace_linear(model, taps.head, num_classes)
        log.info("%s: new %d-class head replaces the weights' %d-class one", name, num_classes, file_classes)
        model.kdlab_new_head = file_classes  # the class count of the weights whose head was replaced
    attach_feature_hooks(model, taps)
    _attach_stage_facts(model, name)
    return model


def _attach_stage_facts(model: nn.Module, name: str) -> None:
    """Pre-activation taps, stage channels and BN-before-ReLU paths (read by OFD) for the ResNets and mobilenet_v2."""
    if BACKBONES[name] is _RESNET:
        blocks = [getattr(model, f"layer{i}")[-1] for i in range(1, 5)]
        last_bn = ["bn3" if hasattr(block, "bn3") else "bn2" for block in blocks]
        model.kdlab_stage_channels = [getattr(b, bn).num_features for b, bn in zip(blocks, last_bn)]
        model.kdlab_bn_before_relu = tuple(
            f"layer{i}.{len(getattr(model, f'layer{i}')) - 1}.{last_bn[i - 1]}" for i in range(2, 5)
        )
        model.kdlab_preact_taps = tuple(f"layer{i}.{len(getattr(model, f'layer{i}')) - 1}.relu" for i in range(1, 5))
        for path in model.kdlab_preact_taps:
            relu = model.get_submodule(path)
            relu.inplace = False  # its input, the block's pre-activation, must survive it
            relu.register_forward_hook(_keep_last_input)  # the block's last call of it is the final ReLU
    elif name == "mobilenet_v2":
        stages = [model.get_submodule(path) for path in BACKBONES[name].stages]
        model.kdlab_stage_channels = [block.out_channels for block in stages]
        model.kdlab_bn_before_relu = tuple(
            f"{path}.conv.{len(block.conv) - 1}" for path, block in zip(BACKBONES[name].stages, stages)
        )


def _keep_last_input(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
    module._kdlab_tap = args[0]


def attach_feature_hooks(model: nn.Module, taps: Taps) -> nn.Module:
    """Make model(x) return (logits, {"feats", "preact_feats", "pooled_feat"}) read at `taps`."""
    model.kdlab_taps = taps
    for path in (taps.stem, *taps.stages):
        model.get_submodule(path).register_forward_hook(_keep_output)
    model.get_submodule(taps.pooled).register_forward_pre_hook(keep_pooled_input)
    model.register_forward_hook(_pack_outputs)
    return model


def _keep_output(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
    module._kdlab_tap = output


def keep_pooled_input(module: nn.Module, args: tuple) -> None:
    """Forward pre-hook of the module whose input is pooled_feat (kdlab.models.heads re-attaches it to a new head)."""
    # a copy: efficientnet's classifier starts with an in-place dropout that would overwrite it
    module._kdlab_tap = torch.flatten(args[0], 1).clone()


def _pack_outputs(model: nn.Module, args: tuple, logits: torch.Tensor) -> tuple[torch.Tensor, dict]:
    taps = model.kdlab_taps
    feats = [model.get_submodule(p).__dict__.pop("_kdlab_tap") for p in (taps.stem, *taps.stages)]
    pooled = model.get_submodule(taps.pooled).__dict__.pop("_kdlab_tap")
    preacts = list(feats)
    if hasattr(model, "kdlab_preact_taps"):
        preacts[1:] = [model.get_submodule(p).__dict__.pop("_kdlab_tap") for p in model.kdlab_preact_taps]
    return logits, {"feats": feats, "preact_feats": preacts, "pooled_feat": pooled}


def _replace_linear(model: nn.Module, path: str, num_classes: int) -> None:
    parent, _, child = path.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    setattr(owner, child, nn.Linear(getattr(owner, child).in_features, num_classes))


def cached_weights_path(weights: WeightsEnum) -> str:
    """Where torchvision's own download would put these weights: <torch hub dir>/checkpoints/<file>."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(weights.url).path))


def _looks_like_path(text: str) -> bool:
    return os.path.exists(text) or os.sep in text or text.endswith((".pth", ".pt", ".bin", ".ckpt", ".tar"))


def _pretrained_state(name: str, pretrained: str) -> tuple[Mapping[str, torch.Tensor], WeightsEnum | None]:
    """Read a local file, or torchvision's file for a weights name from the torch hub cache (downloaded there
    when missing, unless KDLAB_OFFLINE is set)."""
    if _looks_like_path(pretrained):
        return load_state_dict_file(pretrained, what="pretrained weights"), None
    enum = get_model_weights(name)
    try:
        weights = enum.verify(pretrained)
    except (KeyError, ValueError, TypeError):
        known = ", ".join(["DEFAULT", *(w.name for w in enum)])
        raise CheckpointError(
            f"pretrained {pretrained!r} for {name} is neither an existing file nor a torchvision "
            f"weights name (known: {known})"
        ) from None
    path = cached_weights_path(weights)
    if not os.path.isfile(path):
        if offline():
            raise CheckpointError(
                f"{name} weights {weights.name} are not in the torch hub cache and {OFFLINE_ENV} is set, so kdlab "
                f"does not download: fetch {weights.url} and save it as {os.path.basename(path)} in "
                f"{os.path.dirname(path)} (or pass the file's path as pretrained)"
            )
        download_weights(weights, path)
    return load_state_dict_file(path, what=f"torchvision weights {weights}"), weights


def offline() -> bool:
    """KDLAB_OFFLINE=1 (or true/yes/on): never download weights; a missing file is an error naming it."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def download_weights(weights: WeightsEnum, path: str) -> None:
    """Download into the torch hub cache as torchvision does: progress bar, file checked against its hash prefix."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    match = torch.hub.HASH_REGEX.search(os.path.basename(path))
    log.info("downloading %s to %s (set %s=1 to forbid downloads)", weights.url, path, OFFLINE_ENV)
    try:
        torch.hub.download_url_to_file(weights.url, path, match.group(1) if match else None, progress=True)
    except (OSError, RuntimeError, ValueError) as exc:  # no network (URLError is an OSError), a bad hash
        raise CheckpointError(
            f"could not download {weights.url} ({type(exc).__name__}: {exc}); fetch it yourself and save it as "
            f"{os.path.basename(path)} in {os.path.dirname(path)} (or pass the file's path as pretrained)"
        ) from None


def _fit_position_embedding(
    model: nn.Module, state: Mapping[str, torch.Tensor]
) -> Mapping[str, torch.Tensor]:
    """Resize a ViT's position embedding to the model's image size (bicubic, as torchvision does)."""
    key = "encoder.pos_embedding"
    if key not in state or state[key].shape == model.get_parameter(key).shape:
        return state
    return interpolate_embeddings(model.image_size, model.patch_size, dict(state))


for _name in BACKBONES:
    MODELS.register(_name, functools.partial(build_torchvision, _name))
