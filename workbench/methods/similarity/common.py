"""Shape helpers and the channel connector shared by the similarity-based methods.

Every zoo model's stage taps are either feature maps (B, C, H, W) or, for the ViT, token
sequences (B, N, D); embeddings are (B, D). The methods here treat all three as "C channels at P
positions", (B, C, P): a map's positions are its H*W pixels, a token sequence's are its N tokens
(the channels being the D features), and an embedding is one position.
"""
from __future__ import annotations

import contextlib
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn


def as_taps(value: str | Iterable[str]) -> tuple[str, ...]:
    """A tap name or names as a tuple (a lone string is one tap, not its characters)."""
    return (value,) if isinstance(value, str) else tuple(value)


def check_rank(x: torch.Tensor, tap: str, role: str) -> None:
    if x.dim() not in (2, 3, 4):
        raise ValueError(f"{role} tap {tap!r} has shape {tuple(x.shape)}; expected a feature map "
                         "(B, C, H, W), a token sequence (B, N, D) or a vector (B, D)")


def channels_positions(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H*W); tokens (B, N, D) -> (B, D, N); (B, D) -> (B, D, 1)."""
    if x.dim() == 4:
        return x.flatten(2)
    if x.dim() == 3:
        return x.transpose(1, 2)
    if x.dim() == 2:
        return x.unsqueeze(2)
    raise ValueError(f"expected a (B, C, H, W), (B, N, D) or (B, D) tensor, got shape {tuple(x.shape)}")


def common_positions(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two features of one network as (B, C, P) tensors with the same number of positions.

    The larger is average-pooled to the smaller, as FSP's and IRG's reference code does: two maps
    are pooled in 2D (to the smaller height and width), anything else along its positions in 1D
    (tokens in sequence order; a vector counts as one position, so a map meets it as its global
    average)."""
    if a.dim() == 4 and b.dim() == 4 and a.shape[2:] != b.shape[2:]:
        size = (min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3]))
        a, b = F.adaptive_avg_pool2d(a, size), F.adaptive_avg_pool2d(b, size)
    a, b = channels_positions(a), channels_positions(b)
    positions = min(a.shape[2], b.shape[2])
    if a.shape[2] != positions:
        a = F.adaptive_avg_pool1d(a, positions)
    if b.shape[2] != positions:
        b = F.adaptive_avg_pool1d(b, positions)
    return a, b


class ChannelConnector(nn.Module):
    """A 1x1 convolution (no bias) and batch norm mapping C_in to C_out channels, for maps
    (B, C, H, W), token sequences (B, N, D) and vectors (B, D) alike; the layout is kept.

    A 1D convolution of kernel 1 over (B, C, P) is the same map as a 1x1 2D convolution over
    (B, C, H, W), and BatchNorm1d over (B, C, P) the same as BatchNorm2d, so one module serves all."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features   # named as nn.Linear's
        self.conv = nn.Conv1d(in_features, out_features, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm1d(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(channels_positions(x)))                     # (B, C_out, P)
        if x.dim() == 4:
            return y.view(x.shape[0], -1, *x.shape[2:])                   # (B, C_out, H, W)
        if x.dim() == 3:
            return y.transpose(1, 2)                                      # (B, N, C_out)
        return y.squeeze(2)                                               # (B, C_out)


def ensure_connector(modules: nn.ModuleDict, key: str, in_features: int, out_features: int,
                     factory=ChannelConnector) -> None:
    """Build ``modules[key] = factory(in_features, out_features)`` unless one of those sizes is
    already there: ``setup`` runs again when a run is resumed, and trained connectors are kept."""
    current = modules[key] if key in modules else None
    if current is None or (current.in_features, current.out_features) != (in_features, out_features):
        modules[key] = factory(in_features, out_features)


def module_key(tap: str) -> str:
    """A tap name as a ModuleDict key (keys cannot contain '.', module-path taps do)."""
    return tap.replace(".", "/")


def channels(x: torch.Tensor) -> int:
    """The channel count in the (B, C, P) view: C of a map, D of tokens or of a vector."""
    return x.shape[-1] if x.dim() == 3 else x.shape[1]


def float32(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """A context that turns autocast off on ``x``'s device: distances and Gram matrices lose too
    much in bfloat16 (||a||^2 + ||b||^2 - 2 a.b cancels), so the relation math runs in float32."""
    return torch.autocast(device_type=x.device.type, enabled=False)
