"""MobileNetV1 (Howard et al., 2017) in mdistiller's ImageNet layout: the student of its r50_mv1 configs.

The module tree is mdistiller's `mdistiller/models/imagenet/mobilenetv1.py`: `model` is an
nn.Sequential of a stride-2 conv-BN-ReLU stem (index 0), thirteen depthwise-separable blocks
(indices 1-13, each dw3x3-BN-ReLU-pw1x1-BN-ReLU) and the pooling (index 14), then `fc`. So
state dicts of mdistiller's model load here with strict=True and give the same outputs.
Differences, none of which changes a key, a shape or an output at 224x224:
- `fc` has `num_classes` outputs (mdistiller's always has 1000, whatever it is asked for);
- the pooling is global (AdaptiveAvgPool2d(1)) where mdistiller's is AvgPool2d(7), which only fits
  224x224 inputs (at another size its reshape mixes up the batch); both are parameter-free.

feats as mdistiller's model returns them: "feats" holds the outputs of the four stages that end
at a new resolution (blocks 3, 5, 11 and 13: 128, 256, 512 and 1024 channels at /4, /8, /16, /32)
and no stem entry, "preact_feats" the same before their last ReLU, "pooled_feat" the 1024-vector
fed to `fc`. Methods that skip feats[0] (AT, OFD) therefore skip the 128-channel stage, as in the
reference. get_stage_channels() and get_bn_before_relu() are mdistiller's (OFD reads them).

Name: logit-standardization-KD calls this very network "MobileNetV2" (its
`models/imagenet/mobilenetv2.py` is this file with the class renamed), and its
`configs/imagenet/r50_mv2/*.yaml` are written for it (ReviewKD's channel lists 128..1024, CRD's
STUDENT_DIM 1024). Neither reference has another ImageNet "MobileNetV2", so kdlab resolves the
reference-style name "MobileNetV2" on ImageNet-scale datasets to this model
(kdlab.models.build.IMAGENET_ALIASES): those files build the network they were written for.
torchvision's MobileNetV2 is `mobilenet_v2`, the torchvision name, as all ImageNet names are.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdlab.models.build import MODELS
from kdlab.models.checkpoint import load_weights

# (output channels, stride) of the 13 depthwise-separable blocks after the 32-channel stem.
BLOCKS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)
STAGE_ENDS = (3, 5, 11, 13)  # indices in `model` of the blocks whose outputs are feats
STEM_CHANNELS = 32


def conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    """mdistiller's conv_bn: 3x3 conv (no bias), BN, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def conv_dw(cin: int, cout: int, stride: int) -> nn.Sequential:
    """mdistiller's conv_dw: depthwise 3x3-BN-ReLU, then pointwise 1x1-BN-ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, 1, 1, 0, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class MobileNetV1(nn.Module):
    """mdistiller's ImageNet MobileNetV1; forward(x) -> (logits, feats)."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_relu(in_channels, STEM_CHANNELS, 2)]
        cin = STEM_CHANNELS
        for cout, stride in BLOCKS:
            layers.append(conv_dw(cin, cout, stride))
            cin = cout
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        preacts, start = [], 0
        for end in STAGE_ENDS:  # run up to the stage's last block, that block without its final ReLU
            x = self.model[end][:-1](self.model[start:end](x))
            preacts.append(x)
            x, start = F.relu(x), end + 1
        pooled = torch.flatten(self.model[-1](x), 1)
        feats = [F.relu(p) for p in preacts]
        return self.fc(pooled), {"feats": feats, "preact_feats": preacts, "pooled_feat": pooled}

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The last BatchNorm of each stage's last block, whose outputs are preact_feats (mdistiller's, for OFD)."""
        return [self.model[i][-2] for i in STAGE_ENDS]

    def get_stage_channels(self) -> list[int]:
        """Channels of feats (no stem entry), as mdistiller's get_stage_channels()."""
        return [self.model[i][-2].num_features for i in STAGE_ENDS]


@MODELS.register("MobileNetV1")
def mobilenet_v1(num_classes: int = 1000, pretrained: str | None = None, in_channels: int = 3) -> MobileNetV1:
    """mdistiller's ImageNet MobileNetV1; `pretrained` is a local state-dict file (e.g. saved from mdistiller's)."""
    model = MobileNetV1(num_classes=num_classes, in_channels=in_channels)
    if pretrained:
        load_weights(model, pretrained, what="pretrained weights")
    return model
