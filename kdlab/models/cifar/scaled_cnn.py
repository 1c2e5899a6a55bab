"""cifar10_cnn: the cifar10_distillation seed's CNN (danieldutu/cifar10_distillation, distil_pytorch/models/cnn.py).

CIFAR10CNN(scale): conv3x3(3, s) - ELU - conv3x3(s, s) - ELU - maxpool2 - conv3x3(s, 2s) - ELU -
conv3x3(2s, 2s) - ELU - maxpool2 - flatten (2s x 8 x 8) - Linear(., 512) - ELU - Dropout - Linear(512, classes),
convolutions with bias, no BatchNorm. The seed's teacher is scale 32 (2,168,362 parameters for 10 classes, its
notebook's count; its README's "~4.3M" is not what the code builds), its student scale 16 (1,070,874).
In kdlab the scale is a builder argument: DISTILLER.MODEL_KWARGS.SCALE / TEACHER_KWARGS.SCALE, and the dropout
DISTILLER.MODEL_KWARGS.DROPOUT (0 there = the seed's default 0.5).

feats["feats"]: [conv2 block after pooling (s, 16 x 16), conv4 block after pooling (2s, 8 x 8)] and
feats["pooled_feat"] the 512-d ELU(fc1) vector, the seed's get_features() (its feature-distillation target).
feats["preact_feats"] is the same list. Sizes other than 32 x 32 change fc1's input (2s x H/4 x W/4).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdlab.models.build import MODELS

HIDDEN = 512


class ScaledCNN(nn.Module):
    def __init__(self, num_classes: int = 10, scale: int = 32, dropout: float = 0.5, in_channels: int = 3,
                 input_size: int = 32) -> None:
        super().__init__()
        s = int(scale)
        self.conv1 = nn.Conv2d(in_channels, s, 3, padding=1)
        self.conv2 = nn.Conv2d(s, s, 3, padding=1)
        self.conv3 = nn.Conv2d(s, 2 * s, 3, padding=1)
        self.conv4 = nn.Conv2d(2 * s, 2 * s, 3, padding=1)
        self.fc1 = nn.Linear(2 * s * (input_size // 4) ** 2, HIDDEN)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(HIDDEN, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        x = F.max_pool2d(F.elu(self.conv2(F.elu(self.conv1(x)))), 2)
        block1 = x
        x = F.max_pool2d(F.elu(self.conv4(F.elu(self.conv3(x)))), 2)
        feat = F.elu(self.fc1(x.flatten(1)))
        feats = [block1, x]
        return self.fc2(self.dropout(feat)), {"feats": feats, "preact_feats": list(feats), "pooled_feat": feat}


@MODELS.register("cifar10_cnn")
def cifar10_cnn(num_classes: int = 10, scale: int = 32, **kwargs) -> ScaledCNN:
    """The seed's CIFAR10CNN; scale 32 = its teacher, 16 = its student."""
    return ScaledCNN(num_classes=num_classes, scale=scale, **kwargs)
