"""MobileNetV2 (Sandler et al., 2018) in mdistiller's CIFAR layout: "MobileNetV2" is its `mobile_half`."""

from __future__ import annotations

import torch.nn as nn

from kdlab.models.cifar.common import Tensor, conv_bn, global_pool, init_like_mdistiller, register_variants

# (expansion or None for the network's T, output channels, blocks, first stride) per stage
_STAGES = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)
_FEATURE_STAGES = (1, 2, 4, 6)  # feats: the stem, then the outputs of these stages (as mdistiller)


class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU, 1x1 project-BN (linear), residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.use_residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            *conv_bn(cin, hidden, 1),
            nn.ReLU(inplace=True),
            *conv_bn(hidden, hidden, 3, stride, groups=hidden),
            nn.ReLU(inplace=True),
            *conv_bn(hidden, cout, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """Stride-2 stem, seven stages of inverted residuals, 1x1 conv to 1280, global pool, classifier.

    The blocks end without an activation, so preact_feats equals feats.
    """

    def __init__(
        self, expansion: int = 6, width_mult: float = 0.5, num_classes: int = 100, in_channels: int = 3
    ) -> None:
        super().__init__()
        cin = int(32 * width_mult)
        self.conv1 = nn.Sequential(*conv_bn(in_channels, cin, 3, 2), nn.ReLU(inplace=True))
        self.blocks = nn.ModuleList()
        for t, c, n, s in _STAGES:
            cout = int(c * width_mult)
            layers = []
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t or expansion))
                cin = cout
            self.blocks.append(nn.Sequential(*layers))
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = nn.Sequential(*conv_bn(cin, last, 1), nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        self.stage_channels = [int(32 * width_mult)] + [
            int(_STAGES[i][1] * width_mult) for i in _FEATURE_STAGES
        ]
        init_like_mdistiller(self, linear_std=0.01)

    def get_stage_channels(self) -> list[int]:
        """Channels of feats: the stem, then the feature stages (as mdistiller's get_stage_channels, for OFD)."""
        return list(self.stage_channels)

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The projecting BatchNorm of each feature stage's last block (mdistiller's, for OFD)."""
        return [self.blocks[i][-1].conv[-1] for i in _FEATURE_STAGES]

    def forward(self, x: Tensor) -> tuple[Tensor, dict]:
        x = self.conv1(x)
        feats = [x]
        for i, stage in enumerate(self.blocks):
            x = stage(x)
            if i in _FEATURE_STAGES:
                feats.append(x)
        pooled = global_pool(self.conv2(x))
        return self.classifier(pooled), {"feats": feats, "preact_feats": list(feats), "pooled_feat": pooled}


register_variants(MobileNetV2, {"MobileNetV2": dict(expansion=6, width_mult=0.5)})
