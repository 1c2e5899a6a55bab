"""seg_small: a tiny encoder-decoder student for semantic segmentation (~0.3 M parameters at width 1).

Encoder: five stages of two 3x3 conv-BN layers (the first strided), output strides 2, 4, 8, 16 and
16 (the last dilated by 2), widths 16, 24, 32, 64, 96. Decoder (LR-ASPP-like): a 1x1 conv of the
last stage gated by a sigmoid of its global average, upsampled to stride 4, concatenated with a 1x1
projection of the stride-4 stage, fused by a 3x3 conv, classified by a 1x1 conv and upsampled
(bilinear) to the input size. feats["feats"] is the five stage outputs, feats["preact_feats"] the
same before their last ReLU, feats["pooled_feat"] the global average of the last stage.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdlab.models.build import MODELS

WIDTHS = (16, 24, 32, 64, 96)
STRIDES = (2, 2, 2, 2, 1)
DILATIONS = (1, 1, 1, 1, 2)


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
    )


class Stage(nn.Module):
    """conv-BN-ReLU then conv-BN; returns (ReLU output, pre-activation)."""

    def __init__(self, cin: int, cout: int, stride: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = conv_bn(cin, cout, stride=stride, dilation=dilation)
        self.conv2 = conv_bn(cout, cout, dilation=dilation)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        preact = self.conv2(F.relu(self.conv1(x)))
        return F.relu(preact), preact


class SmallSegNet(nn.Module):
    def __init__(self, num_classes: int = 21, in_channels: int = 3, width: float = 1.0, decoder_channels: int = 64):
        super().__init__()
        widths = [max(8, int(round(w * width))) for w in WIDTHS]
        cins = [in_channels, *widths[:-1]]
        self.stages = nn.ModuleList(Stage(ci, co, s, d) for ci, co, s, d in zip(cins, widths, STRIDES, DILATIONS))
        d = decoder_channels
        self.context = nn.Sequential(conv_bn(widths[-1], d, kernel=1), nn.ReLU(inplace=True))
        self.gate = nn.Conv2d(widths[-1], d, kernel_size=1)
        self.low = nn.Sequential(conv_bn(widths[1], d // 2, kernel=1), nn.ReLU(inplace=True))
        self.fuse = nn.Sequential(conv_bn(d + d // 2, d), nn.ReLU(inplace=True))
        self.classifier = nn.Conv2d(d, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        size = x.shape[-2:]
        feats, preacts = [], []
        for stage in self.stages:
            x, pre = stage(x)
            feats.append(x)
            preacts.append(pre)
        pooled = F.adaptive_avg_pool2d(x, 1)
        context = self.context(x) * torch.sigmoid(self.gate(pooled))
        low = feats[1]
        context = F.interpolate(context, size=low.shape[-2:], mode="bilinear", align_corners=False)
        fused = self.fuse(torch.cat([context, self.low(low)], dim=1))
        logits = F.interpolate(self.classifier(fused), size=size, mode="bilinear", align_corners=False)
        return logits, {"feats": feats, "preact_feats": preacts, "pooled_feat": pooled.flatten(1)}


@MODELS.register("seg_small")
def seg_small(num_classes: int = 21, **kwargs) -> SmallSegNet:
    return SmallSegNet(num_classes=num_classes, **kwargs)
