"""Spatial attention maps and how well they cover the object.

- Activation-based attention (Zagoruyko & Komodakis, "Paying More Attention to Attention",
  ICLR 2017, arXiv 1612.03928): for a feature map A of C channels,
  F(A) = 1/C * sum_c |A_c|^2, an (H, W) map of where the network's activations are strong.
- Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020,
  arXiv 2005.00928): with A_l the head-averaged attention of block l and the residual path as I,
  rollout = Â_L ... Â_1, Â_l = (A_l + I) / 2 (rows renormalised); its CLS row says how much each
  patch token feeds the class token.
- Scores against a ground-truth mask M: the fraction of attention mass inside M, and the IoU of
  the top q of pixels (by attention) with M.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F


def at_map(features: torch.Tensor) -> torch.Tensor:
    """F(A) = mean over channels of A^2: (..., C, H, W) -> (..., H, W)."""
    if features.dim() < 3:
        raise ValueError(f"expected a feature map (..., C, H, W), got shape {tuple(features.shape)}")
    return features.float().pow(2).mean(dim=-3)


def attention_rollout(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Rollout of per-block attention probabilities, first block first.

    Each tensor is (B, heads, N, N) or (heads, N, N); returns (B, N, N) or (N, N), rows summing to 1.
    """
    if not attentions:
        raise ValueError("attention_rollout needs at least one block's attentions")
    rollout = None
    for probs in attentions:
        mean = probs.float().mean(dim=-3)                                 # (..., N, N) over heads
        eye = torch.eye(mean.shape[-1], dtype=mean.dtype, device=mean.device)
        step = (mean + eye) / 2                                           # Â_l: attention + residual
        step = step / step.sum(dim=-1, keepdim=True)
        rollout = step if rollout is None else step @ rollout             # Â_l ... Â_1
    return rollout


def cls_to_patches(rollout: torch.Tensor, prefix_tokens: int = 1) -> torch.Tensor:
    """The CLS token's row over the patch tokens as a square grid: (..., p + n*n, p + n*n) -> (..., n, n).

    ``prefix_tokens`` p: the tokens before the patches (1: CLS; 2: CLS and DeiT's distillation
    token), so that they are not taken for patches."""
    if prefix_tokens < 1:
        raise ValueError(f"prefix_tokens={prefix_tokens!r}: the CLS token comes first, so it is at least 1")
    patches = rollout[..., 0, prefix_tokens:]                             # (..., n*n)
    side = math.isqrt(patches.shape[-1])
    if side * side != patches.shape[-1]:
        raise ValueError(f"{patches.shape[-1]} patch tokens do not form a square grid")
    return patches.reshape(*patches.shape[:-1], side, side)


def upsample_to(attention: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (H, W) or (B, H, W) maps to ``size`` = (height, width)."""
    batched = attention.dim() == 3
    x = attention.float()[:, None] if batched else attention.float()[None, None]
    out = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return out[:, 0] if batched else out[0, 0]


def mass_inside(attention: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum(map * mask) / sum(map) over the last two dims; the map must be non-negative.

    (..., H, W) map and bool mask of the same size -> (...); 0 where the map is all zero.
    """
    _check_same_size(attention, mask)
    total = attention.sum(dim=(-2, -1))
    inside = (attention * mask).sum(dim=(-2, -1))
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(total.dtype).tiny),
                       torch.zeros_like(total))


def top_q_iou(attention: torch.Tensor, mask: torch.Tensor, q: float) -> torch.Tensor:
    """IoU of the region holding the ceil(q * H * W) highest-attention pixels with the mask.

    ``q`` in (0, 1]; (..., H, W) map and bool mask -> (...). Ties at the threshold are broken by
    pixel order, so the region always has exactly ceil(q * H * W) pixels.
    """
    if not 0 < q <= 1:
        raise ValueError(f"q={q!r} is not valid; it must be in (0, 1]")
    _check_same_size(attention, mask)
    flat = attention.flatten(-2)                                          # (..., H*W)
    count = math.ceil(q * flat.shape[-1])
    top = flat.topk(count, dim=-1).indices
    region = torch.zeros(flat.shape, dtype=torch.bool, device=flat.device).scatter_(-1, top, True)
    truth = mask.flatten(-2).bool()
    inter = (region & truth).sum(dim=-1).float()
    union = (region | truth).sum(dim=-1).float()
    return inter / union                                                  # union >= count > 0


def _check_same_size(attention: torch.Tensor, mask: torch.Tensor) -> None:
    if attention.shape[-2:] != mask.shape[-2:]:
        raise ValueError(f"map {tuple(attention.shape[-2:])} and mask {tuple(mask.shape[-2:])} differ "
                         "in size; upsample the map first (upsample_to)")
