"""ShuffleNet V2 (Ma et al., 2018) in mdistiller's CIFAR layout: ShuffleV2 (net size 1: 116/232/464, 1024)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdlab.models.cifar.common import Tensor, channel_shuffle, global_pool, register_variants, run_stages


class SplitUnit(nn.Module):
    """Keep half the channels, run the other half through 1x1-dw3x3-1x1, concatenate and shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return (shuffled output, unshuffled pre-activation), as mdistiller does."""
        c = x.shape[1] // 2
        kept, branch = x[:, :c], x[:, c:]
        branch = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(branch)))))
        branch = self.bn3(self.conv3(branch))
        preact = torch.cat([kept, branch], 1)
        return channel_shuffle(torch.cat([kept, F.relu(branch)], 1), 2), preact


class DownUnit(nn.Module):
    """Two stride-2 branches (dw3x3-1x1 and 1x1-dw3x3-1x1), concatenated and shuffled."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        self.conv1 = nn.Conv2d(cin, cin, 3, 2, 1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return (output, output): both branches end in ReLU, so there is no separate pre-activation."""
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        out = channel_shuffle(torch.cat([left, right], 1), 2)
        return out, out


class ShuffleNetV2(nn.Module):
    """1x1 conv stem (24 channels), three stages (DownUnit + SplitUnits), 1x1 conv-BN-ReLU, global pool."""

    def __init__(
        self, widths: Sequence[int], num_blocks: Sequence[int], num_classes: int = 100, in_channels: int = 3
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        for i, (width, n) in enumerate(zip(widths[:-1], num_blocks)):
            self.add_module(
                f"layer{i + 1}", nn.Sequential(DownUnit(cin, width), *[SplitUnit(width) for _ in range(n)])
            )
            cin = width
        self.num_stages = len(num_blocks)
        self.conv2 = nn.Conv2d(cin, widths[-1], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[-1])
        self.linear = nn.Linear(widths[-1], num_classes)
        self.stage_channels = [24, *widths[:-1]]

    def get_stage_channels(self) -> list[int]:
        """Channels of feats: the stem, then each stage (as mdistiller's).

        No get_bn_before_relu: a ShuffleNet cannot be OFD's teacher, as in mdistiller.
        """
        return list(self.stage_channels)

    def forward(self, x: Tensor) -> tuple[Tensor, dict]:
        stem = F.relu(self.bn1(self.conv1(x)))
        x, feats, preacts = run_stages(stem, [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)])
        pooled = global_pool(F.relu(self.bn2(self.conv2(x))))
        return self.linear(pooled), {"feats": feats, "preact_feats": preacts, "pooled_feat": pooled}


register_variants(ShuffleNetV2, {"ShuffleV2": dict(widths=(116, 232, 464, 1024), num_blocks=(3, 7, 3))})
