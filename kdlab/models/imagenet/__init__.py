"""ImageNet-scale models: torchvision's backbones (kdlab's (logits, feats) contract) and mdistiller's MobileNetV1."""

from kdlab.models.imagenet import mobilenetv1, torchvision  # noqa: F401  (register the backbones)
