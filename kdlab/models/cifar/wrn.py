"""Wide ResNets (Zagoruyko & Komodakis, 2016) in mdistiller's layout: wrn_16_1/16_2/40_1/40_2."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from kdlab.models.cifar.common import Tensor, global_pool, init_like_mdistiller, register_variants


class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus (projected) input."""

    def __init__(self, cin: int, cout: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        equal = cin == cout
        self.convShortcut = None if equal else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return (output, bn1(x)): bn1(x) is the pre-activation of the block's input."""
        preact = self.bn1(x)
        act = F.relu(preact)
        out = F.relu(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        # mdistiller's shortcut projects the activated input, the identity adds the raw input
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + self.conv2(out), preact


class NetworkBlock(nn.Module):
    """One stage of WideBlocks (the `layer` attribute keeps mdistiller's state-dict keys)."""

    def __init__(self, n: int, cin: int, cout: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, drop_rate) for i in range(n)]
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return (stage output, pre-activation of the stage input as computed by its first block)."""
        x, entry_preact = self.layer[0](x)
        for block in self.layer[1:]:
            x, _ = block(x)
        return x, entry_preact


class WideResNet(nn.Module):
    """conv3x3 stem, three NetworkBlocks of (depth-4)/6 WideBlocks, BN-ReLU, global pool, fc.

    preact_feats[i] is BN(feats[i]) as applied by the next stage (or the final BN), as in
    mdistiller; it is taken from that single BN call, so running statistics update once per
    forward (mdistiller calls those BNs a second time and updates them twice in training).
    """

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int = 100,
        in_channels: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        self.stage_channels = widths
        init_like_mdistiller(self, zero_linear_bias=True)

    def get_stage_channels(self) -> list[int]:
        """Channels of feats: the stem, then each stage (as mdistiller's get_stage_channels, OFD reads it)."""
        return list(self.stage_channels)

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The BatchNorms that make preact_feats[1:]: block2's and block3's entry bn1, the final bn1 (mdistiller's)."""
        return [self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1]

    def forward(self, x: Tensor) -> tuple[Tensor, dict]:
        x = self.conv1(x)
        feats, entry_preacts = [x], []
        for stage in (self.block1, self.block2, self.block3):
            x, entry_preact = stage(x)
            feats.append(x)
            entry_preacts.append(entry_preact)
        final_preact = self.bn1(x)
        pooled = global_pool(F.relu(final_preact))
        preacts = [feats[0], *entry_preacts[1:], final_preact]
        return self.fc(pooled), {"feats": feats, "preact_feats": preacts, "pooled_feat": pooled}


register_variants(
    WideResNet, {f"wrn_{depth}_{k}": dict(depth=depth, widen_factor=k) for depth in (16, 40) for k in (1, 2)}
)
