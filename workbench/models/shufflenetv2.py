"""ShuffleNetV2 for CIFAR.

Ma, Zhang, Zheng & Sun, "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design",
ECCV 2018, https://arxiv.org/abs/1807.11164, in the CIFAR form of the CRD code
(https://github.com/HobbitLong/RepDistiller, ``models/ShuffleNetv2.py``): a 1x1 conv stem at full
resolution, three stages of one stride-2 down block and ``n`` basic blocks (channel split, a
1x1-dw3x3-1x1 branch on one half, concat, channel shuffle), a 1x1 conv head, pooling and a Linear.
``net_size`` picks the channel widths of the paper's Table 5 (0.5, 1, 1.5, 2).

Taps: ``stem``, ``stage1..3`` (``layer1..3``; H/2, H/4, H/8), ``embedding``; ``stageN_pre`` is the
last basic block's output before its ReLU. The ReLU is applied to the whole shuffled concat, which
equals CRD's ReLU on the branch alone because the pass-through half is the previous block's
output, already non-negative.
"""
from __future__ import annotations

import torch
from torch import nn

from workbench.registry import MODELS

PAPER = "https://arxiv.org/abs/1807.11164"
CONFIGS = {  # net_size: (stage widths + head width, basic blocks per stage)
    0.5: ((48, 96, 192, 1024), (3, 7, 3)),
    1: ((116, 232, 464, 1024), (3, 7, 3)),
    1.5: ((176, 352, 704, 1024), (3, 7, 3)),
    2: ((224, 488, 976, 2048), (3, 7, 3)),
}


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """(B, C, H, W) -> (B, g, C/g, H, W) -> swap the group axes -> (B, C, H, W)."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    """Split channels in half; transform the second half; concat, shuffle, ReLU."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(*conv_bn(half, half, 1), nn.ReLU(),
                                    *conv_bn(half, half, 3, groups=half),
                                    *conv_bn(half, half, 1))
        self.preact = nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep, transform = x.chunk(2, dim=1)  # (B, C/2, H, W) each
        out = channel_shuffle(torch.cat([keep, self.branch(transform)], 1))
        return self.relu(self.preact(out))


class DownBlock(nn.Module):
    """Two stride-2 branches on the full input (dw3x3-1x1 and 1x1-dw3x3-1x1); concat, shuffle."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        self.left = nn.Sequential(*conv_bn(cin, cin, 3, 2, groups=cin), *conv_bn(cin, mid, 1), nn.ReLU())
        self.right = nn.Sequential(*conv_bn(cin, mid, 1), nn.ReLU(),
                                   *conv_bn(mid, mid, 3, 2, groups=mid),
                                   *conv_bn(mid, mid, 1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1))  # (B, cout, H/2, W/2)


class ShuffleNetV2(nn.Module):
    """CIFAR ShuffleNetV2 of width ``net_size`` (0.5, 1, 1.5 or 2)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, net_size: float = 1):
        super().__init__()
        if net_size not in CONFIGS:
            raise ValueError(f"shufflenetv2 net_size must be one of {sorted(CONFIGS)}, got {net_size!r}")
        widths, blocks = CONFIGS[net_size]
        self.num_classes, self.in_channels = num_classes, in_channels
        self.stem = nn.Sequential(*conv_bn(in_channels, 24, 1), nn.ReLU())
        ins = (24,) + widths[:2]
        self.layer1, self.layer2, self.layer3 = (
            nn.Sequential(DownBlock(cin, cout), *[BasicBlock(cout) for _ in range(n)])
            for cin, cout, n in zip(ins, widths, blocks))
        self.head = nn.Sequential(*conv_bn(widths[2], widths[3], 1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(widths[3], num_classes)
        self.taps = {"stem": "stem", "stage1": "layer1", "stage2": "layer2", "stage3": "layer3",
                     "embedding": "flatten"}
        self.preact_taps = {f"stage{i}_pre": f"layer{i}.{n}.preact" for i, n in zip((1, 2, 3), blocks)}
        self.attention_taps: dict[str, str] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)     # (B, 24, H, W)
        x = self.layer1(x)   # (B, c1, H/2, W/2)
        x = self.layer2(x)   # (B, c2, H/4, W/4)
        x = self.layer3(x)   # (B, c3, H/8, W/8)
        x = self.head(x)     # (B, c4, H/8, W/8)
        return self.classifier(self.flatten(self.pool(x)))  # (B, num_classes)


MODELS.register("shufflenetv2", family="shufflenetv2", paper=PAPER)(ShuffleNetV2)
