"""CIFAR VGGs with batch norm: vgg8, vgg13.

Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015,
https://arxiv.org/abs/1409.1556, in the CIFAR form of the CRD code
(https://github.com/HobbitLong/RepDistiller, ``models/vgg.py``, ``vgg8_bn`` / ``vgg13_bn``): five
groups of conv3x3-BN-ReLU, 2x2 max pools between the first four, global average pooling and a
single Linear (no fully connected stack). CRD pools between the 4th and 5th group only for 64 px
inputs; here never, so a CIFAR image gives the same maps. Pools run in ceil mode: 1x1 stays 1x1.

Taps: ``stem`` (group 0), ``stage1..4`` (groups 1-4, after ReLU, before the next pool),
``embedding``; ``stageN_pre`` is the group's last BN output before its ReLU.
"""
from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
from torch import nn

from workbench.registry import MODELS

PAPER = "https://arxiv.org/abs/1409.1556"
CONFIGS = {  # conv widths per group: stem, stage1..4
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}


def conv_group(cin: int, widths: list[int], pool: bool) -> nn.Sequential:
    """[max pool] -> (conv3x3 -> BN -> ReLU) per width, with ``preact`` before the last ReLU."""
    layers = [("pool", nn.MaxPool2d(2, ceil_mode=True))] if pool else []
    for i, width in enumerate(widths):
        layers += [(f"conv{i}", nn.Conv2d(cin, width, 3, padding=1)), (f"bn{i}", nn.BatchNorm2d(width))]
        if i == len(widths) - 1:
            layers.append(("preact", nn.Identity()))
        layers.append((f"relu{i}", nn.ReLU()))
        cin = width
    return nn.Sequential(OrderedDict(layers))


class VGG(nn.Module):
    """A CIFAR VGG given per-group conv widths (see ``CONFIGS``)."""

    def __init__(self, config: list[list[int]], num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels
        ins = [in_channels] + [group[-1] for group in config]
        self.stem = conv_group(ins[0], config[0], pool=False)
        self.stage1, self.stage2, self.stage3 = (conv_group(ins[i], config[i], pool=True) for i in (1, 2, 3))
        self.stage4 = conv_group(ins[4], config[4], pool=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(config[4][-1], num_classes)
        self.taps = {"stem": "stem", **{f"stage{i}": f"stage{i}" for i in (1, 2, 3, 4)},
                     "embedding": "flatten"}
        self.preact_taps = {f"stage{i}_pre": f"stage{i}.preact" for i in (1, 2, 3, 4)}
        self.attention_taps: dict[str, str] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)     # (B, 64, H, W)
        x = self.stage1(x)   # (B, 128, H/2, W/2)
        x = self.stage2(x)   # (B, 256, H/4, W/4)
        x = self.stage3(x)   # (B, 512, H/8, W/8)
        x = self.stage4(x)   # (B, 512, H/8, W/8)
        return self.classifier(self.flatten(self.pool(x)))  # (B, num_classes)


for _name, _config in CONFIGS.items():
    MODELS.register(_name, family="vgg", paper=PAPER)(partial(VGG, _config))
