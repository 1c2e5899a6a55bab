"""A scaled plain CNN family (depth, width, dropout from the config) for small data and quick students."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdlab.errors import ConfigError
from kdlab.models.build import MODELS


def make_norm(kind: str, channels: int) -> nn.Module:
    """bn: BatchNorm; gn: GroupNorm (per-sample, so results do not depend on how a batch is split); none."""
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be bn, gn or none, got {kind!r}")


class ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1, norm: str = "bn") -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, stride, 1, bias=norm == "none"), make_norm(norm, cout))


class SimpleCNN(nn.Module):
    """stem -> `depth` stages (each `blocks` conv-BN-ReLU, then 2x down-sampling) -> pool -> dropout -> fc.

    Stage i has width * 2**i channels. Works on any input of at least 2**(depth-1) pixels.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        width: int = 32,
        depth: int = 3,
        blocks: int = 1,
        dropout: float = 0.0,
        norm: str = "bn",
    ) -> None:
        super().__init__()
        if depth < 1 or width < 1 or blocks < 1:
            raise ValueError(f"SimpleCNN needs depth, width, blocks >= 1 (got {depth}, {width}, {blocks})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"SimpleCNN dropout must be in [0, 1), got {dropout}")
        self.stem = ConvBN(in_channels, width, norm=norm)
        self.stages = nn.ModuleList()
        cin = width
        for i in range(depth):
            cout = width * 2**i
            convs = [ConvBN(cin if j == 0 else cout, cout, 2 if (j == 0 and i > 0) else 1, norm) for j in range(blocks)]
            self.stages.append(nn.ModuleList(convs))
            cin = cout
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, num_classes)
        self.stage_channels = [width] + [width * 2**i for i in range(depth)]
        self.norm = norm

    def get_stage_channels(self) -> list[int]:
        """Channels of feats: the stem, then each stage (mdistiller's get_stage_channels, read by OFD)."""
        return list(self.stage_channels)

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The BatchNorm of each stage's last conv, whose output is preact_feats[1:] (read by OFD's teacher)."""
        if self.norm != "bn":
            raise ConfigError(
                f"SimpleCNN with norm {self.norm!r} has no BatchNorm before its ReLUs (OFD's teacher needs norm bn)"
            )
        return [stage[-1][1] for stage in self.stages]

    def forward(self, x: torch.Tensor):
        pre = self.stem(x)
        x = F.relu(pre)
        feats, preact = [x], [pre]
        for stage in self.stages:
            for conv in stage:
                pre = conv(x)
                x = F.relu(pre)
            feats.append(x)
            preact.append(pre)
        pooled = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        logits = self.fc(self.dropout(pooled))
        return logits, {"feats": feats, "preact_feats": preact, "pooled_feat": pooled}


@MODELS.register("simple_cnn")
def simple_cnn(num_classes: int, **kwargs) -> SimpleCNN:
    """The configurable family: DISTILLER.MODEL_KWARGS.{WIDTH, DEPTH, BLOCKS, DROPOUT, NORM, IN_CHANNELS}."""
    return SimpleCNN(num_classes, **kwargs)


@MODELS.register("digits_teacher")
def digits_teacher(num_classes: int = 10, in_channels: int = 1, dropout: float = 0.0, **kwargs) -> SimpleCNN:
    """Teacher for 8x8 digits: widths 32/64/128, two convs per stage (~0.30 M parameters)."""
    return SimpleCNN(num_classes, in_channels=in_channels, width=32, depth=3, blocks=2, dropout=dropout, **kwargs)


@MODELS.register("digits_student")
def digits_student(num_classes: int = 10, in_channels: int = 1, dropout: float = 0.0, **kwargs) -> SimpleCNN:
    """Student for 8x8 digits: widths 16/32, one conv per stage (~7.6 K parameters)."""
    return SimpleCNN(num_classes, in_channels=in_channels, width=16, depth=2, blocks=1, dropout=dropout, **kwargs)
