"""mdistiller's Tiny-ImageNet MobileNetV2 (`mdistiller/models/cifar/mv2_tinyimagenet.py`).

It is the network mdistiller builds for the name "MobileNetV2" when DATASET.TYPE is tiny_imagenet
(its tiny_imagenet_model_dict; "ResNet18" and "ShuffleV2" there are its CIFAR models), so kdlab
registers it as `mobilenetv2_tinyimagenet` and resolves "MobileNetV2" to it on tiny_imagenet
(kdlab.models.build.TINY_IMAGENET_ALIASES). Module names and order are mdistiller's (`pre`,
`stage1`..`stage7` of `residual` Sequentials, `conv1`, a 1x1 conv classifier `conv2`), so its
state dicts load with strict=True; initialization is PyTorch's default, as there. Its quirks are
kept: a 1x1 stem conv with padding 1 (64x64 in, 66x66 out), conv biases everywhere, ReLU6.

feats as mdistiller's: "feats" = [stem output, stage2, stage3, stage4 outputs, conv1 output]
(32, 24, 32, 64, 1280 channels); "pooled_feat" is the pooled 1280-vector, flattened to (N, 1280)
(mdistiller keeps it N x 1280 x 1 x 1). mdistiller returns no "preact_feats"; kdlab's are the
same maps before their last activation: the stem and conv1 before their ReLU6, the stage
outputs as they are (the blocks end linear). get_stage_channels and get_bn_before_relu are
kdlab's additions (the BatchNorms that make preact_feats[1:]), so OFD can use the model.

ShuffleV2 on Tiny-ImageNet: mdistiller's pools with a fixed 4x4 window, which leaves 2x2 of a
64x64 input, and its linear layer then fails (4096 inputs for 1024 weights), so its
tiny_imagenet/dot/r18_shuv2.yaml cannot run there; kdlab's ShuffleV2 pools globally (equal to
mdistiller's at 32x32), which is what the file needs.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdlab.models.cifar.common import Tensor, register_variants

# (repeats, output channels, stride, expansion) of stage2..stage6; stage1 and stage7 are single blocks.
STAGES = ((2, 24, 2, 6), (3, 32, 2, 6), (4, 64, 2, 6), (3, 96, 1, 6), (3, 160, 1, 6))


class LinearBottleNeck(nn.Module):
    """Inverted residual: 1x1 expand, dw3x3, 1x1 project (no activation after it), identity when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, t: int = 6) -> None:
        super().__init__()
        mid = cin * t
        self.residual = nn.Sequential(
            nn.Conv2d(cin, mid, 1),
            nn.BatchNorm2d(mid),
            nn.ReLU6(inplace=True),
            nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid),
            nn.BatchNorm2d(mid),
            nn.ReLU6(inplace=True),
            nn.Conv2d(mid, cout, 1),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.residual(x)
        return out + x if self.shortcut else out


def _stage(repeats: int, cin: int, cout: int, stride: int, t: int) -> nn.Sequential:
    return nn.Sequential(LinearBottleNeck(cin, cout, stride, t), *[LinearBottleNeck(cout, cout, 1, t)
                                                                  for _ in range(repeats - 1)])


class MobileNetV2TinyImageNet(nn.Module):
    """forward(x) -> (logits, feats) with mdistiller's feats for this model (see the module docstring)."""

    def __init__(self, num_classes: int = 200, in_channels: int = 3) -> None:
        super().__init__()
        self.pre = nn.Sequential(nn.Conv2d(in_channels, 32, 1, padding=1), nn.BatchNorm2d(32), nn.ReLU6(inplace=True))
        self.stage1 = LinearBottleNeck(32, 16, 1, 1)
        cin = 16
        for i, (repeats, cout, stride, t) in enumerate(STAGES, start=2):
            self.add_module(f"stage{i}", _stage(repeats, cin, cout, stride, t))
            cin = cout
        self.stage7 = LinearBottleNeck(160, 320, 1, 6)
        self.conv1 = nn.Sequential(nn.Conv2d(320, 1280, 1), nn.BatchNorm2d(1280), nn.ReLU6(inplace=True))
        self.conv2 = nn.Conv2d(1280, num_classes, 1)
        self.stage_channels = [32, 24, 32, 64, 1280]

    def forward(self, x: Tensor) -> tuple[Tensor, dict]:
        stem_pre = self.pre[:-1](x)
        x = F.relu6(stem_pre)
        feats, preacts = [x], [stem_pre]
        x = self.stage1(x)
        for i in range(2, 7):
            x = getattr(self, f"stage{i}")(x)
            if i <= 4:  # stage2..stage4 end at a new resolution
                feats.append(x)
                preacts.append(x)
        head_pre = self.conv1[:-1](self.stage7(x))
        x = F.relu6(head_pre)
        feats.append(x)
        preacts.append(head_pre)
        pooled = F.adaptive_avg_pool2d(x, 1)
        logits = torch.flatten(self.conv2(pooled), 1)
        return logits, {"feats": feats, "preact_feats": preacts, "pooled_feat": torch.flatten(pooled, 1)}

    def get_stage_channels(self) -> list[int]:
        """Channels of feats: the stem, stage2..stage4, conv1."""
        return list(self.stage_channels)

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The BatchNorms whose outputs are preact_feats[1:] (stage2..4's last projection, conv1's BN)."""
        return [getattr(self, f"stage{i}")[-1].residual[-1] for i in (2, 3, 4)] + [self.conv1[1]]


register_variants(MobileNetV2TinyImageNet, {"mobilenetv2_tinyimagenet": {}})
