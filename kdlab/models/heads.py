"""The student's classifier, as the CLASSIFIER keys configure it: an MLP in place of the model's last Linear,
and classifier-only training on a frozen backbone (a linear probe).

The classifier is the module `kdlab_taps.head` names on torchvision models, else the model's `fc`, `linear`,
`classifier` or `head` when that is an nn.Linear, else its last nn.Linear. A frozen backbone is marked with
`kdlab_trainable_only` (the classifier's path): Distiller.train keeps the rest of the student in eval mode,
so its BatchNorm statistics stay as loaded, as a linear probe's encoder in eval mode does.
"""

from __future__ import annotations

import torch.nn as nn

from kdlab.errors import ConfigError
from kdlab.models.imagenet.torchvision import keep_pooled_input

_NAMES = ("fc", "linear", "classifier", "head")


def classifier_path(model: nn.Module) -> str:
    """The module path of the model's classifier (the nn.Linear that maps pooled_feat to the logits)."""
    taps = getattr(model, "kdlab_taps", None)
    if taps is not None:
        return taps.head
    for name in _NAMES:
        if isinstance(getattr(model, name, None), nn.Linear):
            return name
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"CLASSIFIER: {type(model).__name__} has no nn.Linear classifier to replace or train alone "
                          "(segmentation models and the like); leave the CLASSIFIER keys at their defaults")
    return linears[-1]


def mlp_head(in_features: int, hidden: list[int], num_classes: int, batchnorm: bool, dropout: float) -> nn.Sequential:
    """Linear -> [BatchNorm1d] -> ReLU -> [Dropout] for each hidden width, then Linear to the classes."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), *([nn.BatchNorm1d(width)] if batchnorm else []), nn.ReLU()]
        layers += [nn.Dropout(dropout)] if dropout > 0 else []
        in_features = width
    return nn.Sequential(*layers, nn.Linear(in_features, num_classes))


def replace_classifier(model: nn.Module, head: nn.Module) -> str:
    """Put `head` where the classifier was; keep the torchvision models' pooled_feat hook on it. Return its path."""
    path = classifier_path(model)
    parent, _, child = path.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    setattr(owner, child, head)
    taps = getattr(model, "kdlab_taps", None)
    if taps is not None and taps.pooled == path:  # pooled_feat is read as this module's input
        head.register_forward_pre_hook(keep_pooled_input)
    return path


def freeze_backbone(model: nn.Module, path: str | None = None) -> str:
    """Only the classifier (at `path`) keeps requires_grad; the rest stays in eval mode under Distiller.train."""
    path = path or classifier_path(model)
    model.requires_grad_(False)
    model.get_submodule(path).requires_grad_(True)
    model.kdlab_trainable_only = path
    return path


def configure_classifier(model: nn.Module, node, num_classes: int) -> nn.Module:
    """Apply the CLASSIFIER config group (HIDDEN, BATCHNORM, DROPOUT, FREEZE_BACKBONE) to a built student."""
    if not list(node.HIDDEN) and not node.FREEZE_BACKBONE:
        return model
    path = classifier_path(model)
    if list(node.HIDDEN):
        in_features = model.get_submodule(path).in_features
        replace_classifier(model, mlp_head(in_features, list(node.HIDDEN), num_classes, node.BATCHNORM, node.DROPOUT))
    if node.FREEZE_BACKBONE:
        freeze_backbone(model, path)
    return model
