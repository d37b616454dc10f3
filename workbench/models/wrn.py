"""Wide ResNets: wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2.

Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016, https://arxiv.org/abs/1605.07146:
pre-activation blocks (BN-ReLU-conv twice), ``depth = 6n + 4``, stages of 16k, 32k, 64k channels
after a 16-channel 3x3 stem; as in the CRD code (https://github.com/HobbitLong/RepDistiller,
``models/wrn.py``), no dropout.

Taps: ``stem`` (the first conv), ``stage1..3`` (``block1..3``: residual sums, not activated),
``embedding``. A pre-activation network has no ReLU at the end of a stage: the ReLU that follows
stage N is the first thing of the next stage's first block (or of the head). So ``stageN_pre`` is the
BN output right before that ReLU (``block2.0.preact``, ``block3.0.preact``, ``preact``), the
"BN before ReLU" feature of OFD (Heo et al., ICCV 2019). Its ReLU is what the next stage sees.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from workbench.registry import MODELS

PAPER = "https://arxiv.org/abs/1605.07146"


class WideBlock(nn.Module):
    """x + conv2(relu(bn2(conv1(relu(bn1(x)))))); a 1x1 conv on relu(bn1(x)) when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.preact = nn.Identity()  # bn1(x): the previous stage's output, normalised, before ReLU
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.preact(self.bn1(x)))
        out = self.conv2(self.relu2(self.bn2(self.conv1(act))))
        return (x if self.shortcut is None else self.shortcut(act)) + out


class WideResNet(nn.Module):
    """WRN-``depth``-``widen``: stem conv, three stages of (depth-4)/6 wide blocks, BN-ReLU, pool, Linear."""

    def __init__(self, depth: int, widen: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"a wide ResNet has depth 6n+4 (16, 22, 28, 40, ...), got {depth}")
        blocks = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.num_classes, self.in_channels = num_classes, in_channels
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        stages = []
        for cin, cout, stride in zip(widths, widths[1:], (1, 2, 2)):
            stages.append(nn.Sequential(WideBlock(cin, cout, stride),
                                        *[WideBlock(cout, cout) for _ in range(blocks - 1)]))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(widths[3])
        self.preact = nn.Identity()
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(widths[3], num_classes)
        self.taps = {"stem": "stem", "stage1": "block1", "stage2": "block2", "stage3": "block3",
                     "embedding": "flatten"}
        self.preact_taps = {"stage1_pre": "block2.0.preact", "stage2_pre": "block3.0.preact",
                            "stage3_pre": "preact"}
        self.attention_taps: dict[str, str] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)     # (B, 16, H, W)
        x = self.block1(x)   # (B, 16k, H, W)
        x = self.block2(x)   # (B, 32k, H/2, W/2)
        x = self.block3(x)   # (B, 64k, H/4, W/4)
        x = self.relu(self.preact(self.bn(x)))
        return self.classifier(self.flatten(self.pool(x)))  # (B, num_classes)


for _name, _depth, _widen in [("wrn_16_1", 16, 1), ("wrn_16_2", 16, 2),
                              ("wrn_40_1", 40, 1), ("wrn_40_2", 40, 2)]:
    MODELS.register(_name, family="wrn", paper=PAPER)(partial(WideResNet, _depth, _widen))
