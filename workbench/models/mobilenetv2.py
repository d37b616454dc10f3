"""MobileNetV2 for CIFAR.

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018,
https://arxiv.org/abs/1801.04381, in the CIFAR form of the CRD code
(https://github.com/HobbitLong/RepDistiller, ``models/mobilenetv2.py``): a stride-2 3x3 stem, the
paper's seven bottleneck groups with the first strides reduced for 32x32 inputs, a 1x1 conv to 1280
channels, global average pooling and a Linear. The KD literature's "MobileNetV2" on CIFAR-100 is
CRD's ``mobile_half``: width multiplier 0.5 and expansion 6, the defaults here.

Taps: ``stem``; ``stage1..4`` = groups 0-1, 2, 3-4, 5-6 (CRD's f1..f4; H/2, H/4, H/8, H/16 for an
input of height H); ``embedding``. Bottleneck outputs are linear (no ReLU after the last 1x1 conv:
the "linear bottleneck"), so a stage output is already pre-activation and ``stageN_pre`` names the
same module as ``stageN``.
"""
from __future__ import annotations

import torch
from torch import nn

from workbench.registry import MODELS

PAPER = "https://arxiv.org/abs/1801.04381"
SETTINGS = [  # expansion (None: use `expansion`), channels, blocks, first stride  -- as in CRD
    (1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
    (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1),
]
STAGES = [(0, 1), (2,), (3, 4), (5, 6)]  # which setting rows make up stage1..4


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU()]


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection; identity shortcut when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        self.conv = nn.Sequential(*conv_bn_relu(cin, hidden, 1),
                                  *conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
                                  nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    """CIFAR MobileNetV2 with a width multiplier (channels scale, the 1280-wide head only grows)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3,
                 width_mult: float = 0.5, expansion: int = 6):
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels
        cin = int(32 * width_mult)
        self.stem = nn.Sequential(*conv_bn_relu(in_channels, cin, 3, stride=2))
        groups = []
        for t, c, n, s in SETTINGS:
            cout, blocks = int(c * width_mult), []
            for stride in [s] + [1] * (n - 1):
                blocks.append(InvertedResidual(cin, cout, stride, t or expansion))
                cin = cout
            groups.append(blocks)
        self.stage1, self.stage2, self.stage3, self.stage4 = (
            nn.Sequential(*[block for row in rows for block in groups[row]]) for rows in STAGES)
        head = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.head = nn.Sequential(*conv_bn_relu(cin, head, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(head, num_classes)
        self.taps = {"stem": "stem", **{f"stage{i}": f"stage{i}" for i in (1, 2, 3, 4)},
                     "embedding": "flatten"}
        self.preact_taps = {f"stage{i}_pre": f"stage{i}" for i in (1, 2, 3, 4)}
        self.attention_taps: dict[str, str] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)     # (B, 32w, H/2, W/2)
        x = self.stage1(x)   # (B, 24w, H/2, W/2)
        x = self.stage2(x)   # (B, 32w, H/4, W/4)
        x = self.stage3(x)   # (B, 96w, H/8, W/8)
        x = self.stage4(x)   # (B, 320w, H/16, W/16)
        x = self.head(x)     # (B, 1280, H/16, W/16)
        return self.classifier(self.flatten(self.pool(x)))  # (B, num_classes)


MODELS.register("mobilenetv2", family="mobilenetv2", paper=PAPER)(MobileNetV2)
