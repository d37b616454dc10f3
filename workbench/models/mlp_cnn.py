"""The two smallest families: an MLP and a plain CNN, fast enough for sklearn digits (1x8x8) on a CPU.

- ``mlp``: fully connected ReLU layers on the flattened input, the kind of student and teacher of
  Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network" (NIPS DL workshop 2014,
  https://arxiv.org/abs/1503.02531), section 3 (MNIST).
- ``cnn``: ``depth`` stages of conv3x3-BN-ReLU, channels doubling from ``width``, with a 2x2 max
  pool in front of every stage but the first. The pools run in ceil mode, so a 1x1 map stays 1x1
  and any input size works (8x8 -> 4x4 -> 2x2 with the default depth 3).
"""
from __future__ import annotations

from collections import OrderedDict
from math import prod

import torch
from torch import nn

from workbench.registry import MODELS


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU] per hidden size -> Linear classifier.

    The first layer's width is fixed at construction from ``in_channels x image_size``; an input
    with another number of values raises a ValueError that names both sizes.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3,
                 hidden_sizes: tuple[int, ...] = (256, 128), image_size: int | tuple[int, int] = 32):
        super().__init__()
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.num_classes, self.in_channels = num_classes, in_channels
        self.input_shape = (in_channels, height, width)
        self.flatten = nn.Flatten()
        widths = [prod(self.input_shape), *hidden_sizes]
        self.hidden = nn.Sequential(*[nn.Sequential(nn.Linear(a, b), nn.ReLU())
                                      for a, b in zip(widths, widths[1:])])
        self.classifier = nn.Linear(widths[-1], num_classes)
        self.taps = {f"stage{i + 1}": f"hidden.{i}" for i in range(len(hidden_sizes))}
        self.taps["embedding"] = f"hidden.{len(hidden_sizes) - 1}" if hidden_sizes else "flatten"
        self.preact_taps: dict[str, str] = {}
        self.attention_taps: dict[str, str] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x[0].numel() != prod(self.input_shape):
            raise ValueError(f"mlp was built for inputs of {'x'.join(map(str, self.input_shape))} = "
                             f"{prod(self.input_shape)} values, got {tuple(x.shape[1:])}; "
                             f"build it with in_channels/image_size matching the data")
        return self.classifier(self.hidden(self.flatten(x)))  # (B, num_classes)


class CNN(nn.Module):
    """``depth`` conv3x3-BN-ReLU stages (channels ``width * 2**i``), global average pool, Linear."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32, depth: int = 3):
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels
        channels = [in_channels] + [width * 2 ** i for i in range(depth)]
        self.stages = nn.Sequential(*[self._stage(a, b, pool=i > 0)
                                      for i, (a, b) in enumerate(zip(channels, channels[1:]))])
        self.pool = nn.AdaptiveAvgPool2d(1)  # (B, C, 1, 1)
        self.flatten = nn.Flatten()          # (B, C)
        self.classifier = nn.Linear(channels[-1], num_classes)
        self.taps = {f"stage{i + 1}": f"stages.{i}" for i in range(depth)}
        self.taps["embedding"] = "flatten"
        self.preact_taps = {f"stage{i + 1}_pre": f"stages.{i}.preact" for i in range(depth)}
        self.attention_taps: dict[str, str] = {}

    @staticmethod
    def _stage(cin: int, cout: int, pool: bool) -> nn.Sequential:
        layers = [("pool", nn.MaxPool2d(2, ceil_mode=True))] if pool else []  # halves H, W; 1 stays 1
        layers += [("conv", nn.Conv2d(cin, cout, 3, padding=1, bias=False)),
                   ("bn", nn.BatchNorm2d(cout)),
                   ("preact", nn.Identity()),
                   ("relu", nn.ReLU())]
        return nn.Sequential(OrderedDict(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(x)                                # (B, width * 2**(depth-1), H', W')
        return self.classifier(self.flatten(self.pool(x)))  # (B, num_classes)


MODELS.register("mlp", family="mlp", paper="https://arxiv.org/abs/1503.02531")(MLP)
MODELS.register("cnn", family="cnn")(CNN)
