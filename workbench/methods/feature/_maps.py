"""Small shape helpers shared by the feature-based methods of this folder.

Feature taps come in three shapes across the zoo: CNN maps (B, C, H, W), ViT token sequences
(B, N, D) and pooled vectors (B, D). Feature-based losses are written for maps, so tokens are laid
out as a map first (:func:`as_map`), and two maps of different spatial size are brought to the
smaller one by average pooling (:func:`pool_to_common`), as mdistiller and RepDistiller do for AT,
NST, FT and SimKD.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ...taps import expand_taps


def as_map(feature: torch.Tensor, tap: str) -> torch.Tensor:
    """A feature as a map (B, C, H, W).

    4D maps pass through. Tokens (B, N, D) become a map with D channels, one position per token:
    a square grid when N is a square, or when N - 1 is one (then the first token, ViT's class
    token, is dropped because it has no place in the image); otherwise a one-pixel-wide strip
    (B, D, N, 1). Anything else raises a ValueError naming the tap and its shape.
    """
    if feature.dim() == 4:
        return feature
    if feature.dim() == 3:
        batch, tokens, dim = feature.shape
        side = math.isqrt(tokens)
        if side * side != tokens and tokens > 1 and math.isqrt(tokens - 1) ** 2 == tokens - 1:
            feature, tokens, side = feature[:, 1:], tokens - 1, math.isqrt(tokens - 1)
        grid = (side, side) if side * side == tokens else (tokens, 1)
        return feature.transpose(1, 2).reshape(batch, dim, *grid)      # (B, D, H, W)
    raise ValueError(f"tap {tap!r} has shape {tuple(feature.shape)}; this method needs a feature "
                     "map (B, C, H, W) or tokens (B, N, D), e.g. a stage output, not a pooled vector")


def pool_to_common(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger of two maps to the smaller spatial size (per axis)."""
    size = (min(student.shape[-2], teacher.shape[-2]), min(student.shape[-1], teacher.shape[-1]))
    if tuple(student.shape[-2:]) != size:
        student = F.adaptive_avg_pool2d(student, size)
    if tuple(teacher.shape[-2:]) != size:
        teacher = F.adaptive_avg_pool2d(teacher, size)
    return student, teacher


def tap_tuple(taps: str | Iterable[str]) -> tuple[str, ...]:
    """Tap names as a tuple: a single name or any iterable (a list from a JSON config) works."""
    return (taps,) if isinstance(taps, str) else tuple(taps)


def middle_stage(model: nn.Module, taps: tuple[str, ...]) -> tuple[str, ...]:
    """Replace ``"@middle"`` by the model's middle stage, ``@stages[(n - 1) // 2]``.

    With the stem excluded this is stage2 of the CIFAR ResNets/WRNs (3 stages) and of VGG (4), the
    layer mdistiller's FitNet config (``HINT_LAYER = 2``, counting the stem as 0) uses as the hint.
    """
    out = []
    for name in taps:
        if name == "@middle":
            stages = expand_taps(model, ["@stages"])
            name = stages[(len(stages) - 1) // 2]
        out.append(name)
    return tuple(out)


def check_pairs(method: str, pairs: list[tuple[str, str]]) -> None:
    if not pairs:
        raise ValueError(f"{method}: no (student, teacher) tap pairs; "
                         "give student_taps and teacher_taps")
