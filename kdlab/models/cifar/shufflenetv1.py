"""ShuffleNet V1 (Zhang et al., 2018) in mdistiller's CIFAR layout: ShuffleV1 (3 groups, 240/480/960)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdlab.models.cifar.common import Tensor, channel_shuffle, global_pool, register_variants, run_stages


class ShuffleUnit(nn.Module):
    """Grouped 1x1, shuffle, depthwise 3x3, grouped 1x1; stride 2 concatenates an avg-pooled input."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid = cout // 4
        self.first_groups = 1 if cin == 24 else groups  # the stem's 24 channels are not grouped
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            preact = torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1)
        else:
            preact = out + x
        return F.relu(preact), preact


class ShuffleNetV1(nn.Module):
    """1x1 conv stem (24 channels, stride 1 for 32x32), three stride-2 stages of ShuffleUnits, global pool."""

    def __init__(
        self,
        widths: Sequence[int],
        num_blocks: Sequence[int],
        groups: int,
        num_classes: int = 100,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        for i, (width, n) in enumerate(zip(widths, num_blocks)):
            # the first unit concatenates its input, so its conv branch produces width - cin channels
            units = [ShuffleUnit(cin, width - cin, 2, groups)]
            units += [ShuffleUnit(width, width, 1, groups) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*units))
            cin = width
        self.num_stages = len(widths)
        self.linear = nn.Linear(cin, num_classes)
        self.stage_channels = [24, *widths]

    def get_stage_channels(self) -> list[int]:
        """Channels of feats: the stem, then each stage.

        mdistiller's ShuffleV1 has no get_stage_channels; kdlab's lets it be an OFD student.
        No get_bn_before_relu: a ShuffleNet cannot be OFD's teacher, as in mdistiller.
        """
        return list(self.stage_channels)

    def forward(self, x: Tensor) -> tuple[Tensor, dict]:
        stem = F.relu(self.bn1(self.conv1(x)))
        x, feats, preacts = run_stages(stem, [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)])
        pooled = global_pool(x)
        return self.linear(pooled), {"feats": feats, "preact_feats": preacts, "pooled_feat": pooled}


register_variants(ShuffleNetV1, {"ShuffleV1": dict(widths=(240, 480, 960), num_blocks=(4, 8, 4), groups=3)})
