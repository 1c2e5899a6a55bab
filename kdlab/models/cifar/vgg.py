"""VGG with BatchNorm (Simonyan & Zisserman, 2015), mdistiller's CIFAR layout: vgg8/11/13/16/19."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn
import torch.nn.functional as F

from kdlab.models.cifar.common import Tensor, global_pool, init_like_mdistiller, register_variants


def _block(cin: int, widths: Sequence[int]) -> nn.Sequential:
    """conv3x3(bias)-BN-ReLU per width, without the last ReLU (the network applies it, keeping the preact)."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(cin, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        cin = width
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    """Five conv blocks (block0..block4), 2x2 max-pooling between the first four, global pool, classifier.

    As in mdistiller, the max-pool between block3 and block4 is applied only to 64x64 inputs
    (Tiny-ImageNet), so 32x32 inputs reach block4 at 4x4.
    """

    def __init__(self, widths: Sequence[Sequence[int]], num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        cin = in_channels
        for i, block_widths in enumerate(widths):
            self.add_module(f"block{i}", _block(cin, block_widths))
            cin = block_widths[-1]
        self.num_blocks = len(widths)
        self.classifier = nn.Linear(cin, num_classes)
        self.stage_channels = [w[-1] for w in widths]
        init_like_mdistiller(self, linear_std=0.01)

    def get_stage_channels(self) -> list[int]:
        """Channels of feats: block0, then block1..block4 (as mdistiller's get_stage_channels, OFD reads it)."""
        return list(self.stage_channels)

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The last BatchNorm of block1..block4, before the ReLU the network applies (mdistiller's, for OFD)."""
        return [getattr(self, f"block{i}")[-1] for i in range(1, self.num_blocks)]

    def forward(self, x: Tensor) -> tuple[Tensor, dict]:
        pool_before_last = x.shape[2] == 64
        x = F.relu(self.block0(x))
        feats, preacts = [x], [x]
        for i in range(1, self.num_blocks):
            if i < self.num_blocks - 1 or pool_before_last:
                x = F.max_pool2d(x, 2, 2)
            preact = getattr(self, f"block{i}")(x)
            x = F.relu(preact)
            feats.append(x)
            preacts.append(preact)
        pooled = global_pool(x, adaptive=True)
        return self.classifier(pooled), {"feats": feats, "preact_feats": preacts, "pooled_feat": pooled}


# convs per block for each depth (mdistiller's configs S, A, B, D, E), widths 64, 128, 256, 512, 512
_CONVS_PER_BLOCK = {
    "vgg8": (1, 1, 1, 1, 1),
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}
register_variants(
    VGG,
    {
        name: dict(widths=[[w] * n for w, n in zip((64, 128, 256, 512, 512), counts)])
        for name, counts in _CONVS_PER_BLOCK.items()
    },
)
