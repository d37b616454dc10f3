"""CIFAR ResNets: resnet8 ... resnet110, resnet8x4, resnet32x4.

He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
https://arxiv.org/abs/1512.03385, section 4.2 (the 6n+2 CIFAR networks: a 3x3 stem, three stages of
n basic blocks at strides 1, 2, 2). As in the CRD code (Tian et al., ICLR 2020,
https://github.com/HobbitLong/RepDistiller, ``models/resnet.py``): shortcuts that change shape are a
1x1 conv + BN, and the "x4" networks widen the stages to 32-64-128-256 channels.

Taps: ``stem`` (conv-BN-ReLU), ``stage1..3`` (``layer1..3``), ``embedding`` (pooled, flattened);
``stageN_pre`` is the last block's residual sum before its final ReLU.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from workbench.registry import MODELS

PAPER = "https://arxiv.org/abs/1512.03385"


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); ``preact`` sees the sum before the ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())
        self.preact = nn.Identity()
        self.relu = nn.ReLU()  # not in place: a hook on `preact` keeps the pre-activation intact

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu(self.preact(out + self.shortcut(x)))


class ResNet(nn.Module):
    """A CIFAR ResNet of ``depth = 6n + 2`` layers; ``widths`` = (stem, stage1, stage2, stage3)."""

    def __init__(self, depth: int, widths: tuple[int, int, int, int],
                 num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has depth 6n+2 (8, 14, 20, ...), got {depth}")
        blocks = (depth - 2) // 6
        self.num_classes, self.in_channels = num_classes, in_channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages = []
        for cin, cout, stride in zip(widths, widths[1:], (1, 2, 2)):
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride),
                                        *[BasicBlock(cout, cout) for _ in range(blocks - 1)]))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(widths[3], num_classes)
        self.taps = {"stem": "stem", "stage1": "layer1", "stage2": "layer2", "stage3": "layer3",
                     "embedding": "flatten"}
        self.preact_taps = {f"stage{i}_pre": f"layer{i}.{blocks - 1}.preact" for i in (1, 2, 3)}
        self.attention_taps: dict[str, str] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)     # (B, w0, H, W)
        x = self.layer1(x)   # (B, w1, H, W)
        x = self.layer2(x)   # (B, w2, H/2, W/2)
        x = self.layer3(x)   # (B, w3, H/4, W/4)
        return self.classifier(self.flatten(self.pool(x)))  # (B, num_classes)


for _name, _depth, _widths in [
    ("resnet8", 8, (16, 16, 32, 64)), ("resnet14", 14, (16, 16, 32, 64)),
    ("resnet20", 20, (16, 16, 32, 64)), ("resnet32", 32, (16, 16, 32, 64)),
    ("resnet44", 44, (16, 16, 32, 64)), ("resnet56", 56, (16, 16, 32, 64)),
    ("resnet110", 110, (16, 16, 32, 64)),
    ("resnet8x4", 8, (32, 64, 128, 256)), ("resnet32x4", 32, (32, 64, 128, 256)),
]:
    MODELS.register(_name, family="resnet", paper=PAPER)(partial(ResNet, _depth, _widths))
