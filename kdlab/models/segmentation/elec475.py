"""elec475_light: the Elec475 VOC seed's "light" student (EYErbil/Knowledge-Distillation, model.py).

LightweightResNet there: torchvision's MobileNetV2 features (no pretrained weights) split at output strides
4 (features[:4], 24 ch), 8 (features[4:7], 32 ch) and 32 (features[7:], 1280 ch); an ASPP (1x1, three 3x3
at dilations 6 / 12 / 18, image pooling; 256 ch each, fused by a 1x1 conv) on the last map, upsampled to the
stride-8 map and concatenated with it; a decoder of two 3x3 conv-BN-ReLU layers (256 ch) with dropout 0.5
and 0.1; a 1x1 classifier and a bilinear upsampling to the input size. 13,317,141 parameters for 21
classes. The seed's student also owns its feature-KD align layers (1x1 convs 24->256, 32->512, 1280->1024,
1,335,040 parameters, 14,652,181 in all); in kdlab those are FEATKD's connectors (FEATKD.CONNECTOR conv).

feats["feats"]: [features[0] (/2, 32 ch), x1 (/4, 24 ch), x2 (/8, 32 ch), x3 (/32, 1280 ch)]: indices 1..3
are the seed's student features, paired with the teacher's layer1..layer3 (fcn_resnet50 feats 1..3).
feats["preact_feats"] is the same list, feats["pooled_feat"] the global average of x3.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from kdlab.models.build import MODELS

ASPP_RATES = (6, 12, 18)


def _cbr(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ASPP(nn.Module):
    """The seed's ASPP: 1x1, three dilated 3x3 and an image-pooling branch, concatenated, fused by a 1x1 conv."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList([_cbr(cin, cout), *(_cbr(cin, cout, 3, r) for r in ASPP_RATES)])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), _cbr(cin, cout))
        self.fuse = _cbr(cout * 5, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([*(b(x) for b in self.branches), pooled], dim=1))


class Elec475Light(nn.Module):
    SPLITS = (1, 4, 7)  # features[0] | [1:4] (/4) | [4:7] (/8) | [7:] (/32)

    def __init__(self, num_classes: int = 21, dropout: tuple[float, float] = (0.5, 0.1)) -> None:
        super().__init__()
        self.backbone = torchvision.models.mobilenet_v2(weights=None).features
        self.aspp = ASPP(1280, 256)
        self.decoder = nn.Sequential(
            _cbr(256 + 32, 256, 3), nn.Dropout(dropout[0]), _cbr(256, 256, 3), nn.Dropout(dropout[1])
        )
        self.classifier = nn.Conv2d(256, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        size = x.shape[-2:]
        feats = []
        bounds = (0, *self.SPLITS, len(self.backbone))
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            x = self.backbone[lo:hi](x)
            feats.append(x)
        mid, top = feats[2], feats[3]
        context = F.interpolate(self.aspp(top), size=mid.shape[-2:], mode="bilinear", align_corners=False)
        decoded = self.decoder(torch.cat([context, mid], dim=1))
        decoded = F.interpolate(decoded, size=size, mode="bilinear", align_corners=False)
        pooled = F.adaptive_avg_pool2d(top, 1).flatten(1)
        return self.classifier(decoded), {"feats": feats, "preact_feats": list(feats), "pooled_feat": pooled}


@MODELS.register("elec475_light")
def elec475_light(num_classes: int = 21, **kwargs) -> Elec475Light:
    return Elec475Light(num_classes=num_classes, **kwargs)
