"""`DataBundle`: what every loader returns, and tensor-indexed batching for in-memory sets."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch


@dataclass
class Batch:
    """One mini-batch: inputs, labels, the samples' indices in their split, and extra targets."""

    x: torch.Tensor                      # (B, C, H, W) or (B, D)
    y: torch.Tensor                      # (B,) int64 class labels
    index: torch.Tensor                  # (B,) int64 positions in the split
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. "mask": (B, H, W)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(move(self.x), move(self.y), self.index,
                     {k: move(v) for k, v in self.extras.items()})

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class Split:
    """An in-memory split. ``extras`` holds per-sample targets aligned with ``x`` (masks, boxes)."""

    x: torch.Tensor
    y: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"inputs and labels differ in length: {self.x.shape[0]} vs {self.y.shape[0]}")
        for name, value in self.extras.items():
            if value.shape[0] != self.x.shape[0]:
                raise ValueError(f"extra target {name!r} has {value.shape[0]} rows, expected {self.x.shape[0]}")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, index: torch.Tensor) -> "Split":
        return Split(self.x[index], self.y[index], {k: v[index] for k, v in self.extras.items()})

    def batch(self, index: torch.Tensor) -> Batch:
        return Batch(self.x[index], self.y[index], index, {k: v[index] for k, v in self.extras.items()})

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None, drop_last: bool = False) -> Iterator[Batch]:
        """Yield batches by tensor indexing (no worker processes, no per-sample Python)."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            yield self.batch(order[start:start + batch_size])


@dataclass
class DataBundle:
    """Train and test splits plus what a model needs to know about them."""

    name: str
    train: Split
    test: Split
    num_classes: int
    class_names: list[str]
    input_shape: tuple[int, ...]          # one sample's shape, e.g. (3, 32, 32)
    meta: dict = field(default_factory=dict)

    @property
    def in_channels(self) -> int:
        return int(self.input_shape[0])

    def __repr__(self) -> str:
        return (f"DataBundle({self.name!r}, train={len(self.train)}, test={len(self.test)}, "
                f"classes={self.num_classes}, input_shape={tuple(self.input_shape)})")
