"""CIFAR ResNets in mdistiller's two layouts: resnet8..resnet110, resnet8x4/32x4 and ResNet18/34/50.

One family: the layouts differ only in depth, widths, the projection shortcut's name
("downsample" or "shortcut") and the classifier's name ("fc" or "linear"), which are kept so
that mdistiller's checkpoints load unchanged, and in the pooling kernel mdistiller used.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn
import torch.nn.functional as F

from kdlab.models.cifar.common import Tensor, global_pool, init_like_mdistiller, register_variants, run_stages


def _projection(cin: int, cout: int, stride: int) -> nn.Module | None:
    """1x1 conv + BN shortcut when the block changes shape, else None (identity)."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class _ResidualBlock(nn.Module):
    expansion = 1
    last_bn = "bn2"  # the BatchNorm whose output (plus the shortcut) is the block's pre-activation

    def add_shortcut(self, inplanes: int, planes: int, stride: int, shortcut_name: str) -> None:
        """Register the shortcut last, under mdistiller's name, so state-dict keys keep its order."""
        self.shortcut_name = shortcut_name
        self.add_module(shortcut_name, _projection(inplanes, planes * self.expansion, stride))

    def residual(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return (relu(residual + shortcut), residual + shortcut)."""
        shortcut = getattr(self, self.shortcut_name)
        preact = self.residual(x) + (x if shortcut is None else shortcut(x))
        return F.relu(preact), preact


class BasicBlock(_ResidualBlock):
    """Two 3x3 convs."""

    def __init__(self, inplanes: int, planes: int, stride: int, shortcut_name: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.add_shortcut(inplanes, planes, stride, shortcut_name)

    def residual(self, x: Tensor) -> Tensor:
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


class Bottleneck(_ResidualBlock):
    """1x1 reduce, 3x3, 1x1 expand (x4)."""

    expansion = 4
    last_bn = "bn3"

    def __init__(self, inplanes: int, planes: int, stride: int, shortcut_name: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.add_shortcut(inplanes, planes, stride, shortcut_name)

    def residual(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


class ResNet(nn.Module):
    """conv3x3-BN-ReLU stem, stages layer1..layerN (stride 1 then 2), global pool, linear head."""

    def __init__(
        self,
        block: type[_ResidualBlock],
        num_blocks: Sequence[int],
        widths: Sequence[int],
        stem_width: int,
        num_classes: int = 100,
        in_channels: int = 3,
        shortcut_name: str = "downsample",
        head_name: str = "fc",
        adaptive_pool: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, stem_width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        cin = stem_width
        self.stage_names: list[str] = []
        for i, (n, width) in enumerate(zip(num_blocks, widths)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, width, 2 if (j == 0 and i > 0) else 1, shortcut_name))
                cin = width * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.stage_names.append(f"layer{i + 1}")
        self.head_name = head_name
        self.adaptive_pool = adaptive_pool
        self.add_module(head_name, nn.Linear(cin, num_classes))
        self.stage_channels = [stem_width] + [w * block.expansion for w in widths]
        init_like_mdistiller(self)

    def get_stage_channels(self) -> list[int]:
        """Channels of feats: the stem, then each stage (as mdistiller's get_stage_channels, OFD reads it)."""
        return list(self.stage_channels)

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The last BatchNorm of each stage's last block (bn2 basic, bn3 bottleneck), as mdistiller's (OFD)."""
        return [getattr(getattr(self, name)[-1], getattr(self, name)[-1].last_bn) for name in self.stage_names]

    def forward(self, x: Tensor) -> tuple[Tensor, dict]:
        stem = F.relu(self.bn1(self.conv1(x)))
        x, feats, preacts = run_stages(stem, [getattr(self, name) for name in self.stage_names])
        pooled = global_pool(x, self.adaptive_pool)
        logits = getattr(self, self.head_name)(pooled)
        return logits, {"feats": feats, "preact_feats": preacts, "pooled_feat": pooled}


def _cifar_resnet(depth: int, filters: Sequence[int]) -> dict:
    """mdistiller's resnet<depth>: 3 stages of (depth-2)/6 basic blocks; filters = stem + 3 stage widths."""
    n = (depth - 2) // 6
    return dict(
        block=BasicBlock,
        num_blocks=[n] * 3,
        widths=filters[1:],
        stem_width=filters[0],
        shortcut_name="downsample",
        head_name="fc",
        adaptive_pool=False,
    )


def _wide_stem_resnet(block: type[_ResidualBlock], num_blocks: Sequence[int]) -> dict:
    """mdistiller's ResNet18/34/50 (resnetv2.py): 64-wide stem, 4 stages, its names and adaptive pooling."""
    return dict(
        block=block,
        num_blocks=num_blocks,
        widths=(64, 128, 256, 512),
        stem_width=64,
        shortcut_name="shortcut",
        head_name="linear",
        adaptive_pool=True,
    )


_THIN, _X4 = (16, 16, 32, 64), (32, 64, 128, 256)
register_variants(
    ResNet,
    {
        **{f"resnet{d}": _cifar_resnet(d, _THIN) for d in (8, 14, 20, 32, 44, 56, 110)},
        "resnet8x4": _cifar_resnet(8, _X4),
        "resnet32x4": _cifar_resnet(32, _X4),
        "ResNet18": _wide_stem_resnet(BasicBlock, (2, 2, 2, 2)),
        "ResNet34": _wide_stem_resnet(BasicBlock, (3, 4, 6, 3)),
        "ResNet50": _wide_stem_resnet(Bottleneck, (3, 4, 6, 3)),
    },
)
