"""ImageNet-scale models: torchvision's backbones with kdlab's (logits, feats) contract."""

from kdlab.models.imagenet import torchvision  # noqa: F401  (registers the backbones)
