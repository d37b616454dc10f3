"""A small Vision Transformer: vit_tiny.

Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale",
ICLR 2021, https://arxiv.org/abs/2010.11929 (pre-norm blocks, a CLS token, learned position
embeddings), at the DeiT-Tiny end of the scale (Touvron et al., ICML 2021,
https://arxiv.org/abs/2012.12877) and smaller by default so it trains on a CPU: patch 4, width 128,
6 blocks of 4 heads, MLP ratio 2. The position embedding is sized at construction for
``image_size``; ``patch_size`` must divide it, and a forward pass at another size raises.

Taps: ``stem`` (patch embedding, (B, dim, H/p, W/p)), ``stage1..depth`` (block outputs, tokens
(B, 1 + N, dim)), ``embedding`` (the normalised CLS token, (B, dim)). Attention taps
``block0..`` name each block's ``attn.probs``, a softmax module whose output is (B, heads, N+1, N+1).
"""
from __future__ import annotations

import torch
from torch import nn

from workbench.registry import MODELS

PAPER = "https://arxiv.org/abs/2010.11929"


class AttentionProbs(nn.Module):
    """softmax(q k^T / sqrt(d)) over the keys, as a module so that a forward hook can record it."""

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.softmax(dim=-1)  # (B, heads, N, N), rows sum to 1


class Attention(nn.Module):
    """Multi-head self-attention: Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V, per head."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.probs = AttentionProbs()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, dim = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attn = self.probs(q @ k.transpose(-2, -1) * self.scale)  # (B, heads, N, N)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, dim))  # (B, N, dim)


class Block(nn.Module):
    """x + Attention(LN(x)); then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ClsToken(nn.Module):
    """(B, N, dim) -> (B, dim): the first token."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


class ViT(nn.Module):
    """Patch embedding + CLS token + learned positions -> ``depth`` pre-norm blocks -> LN -> Linear."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                 patch_size: int = 4, dim: int = 128, depth: int = 6, heads: int = 4,
                 mlp_ratio: float = 2.0):
        super().__init__()
        if patch_size > image_size or image_size % patch_size:
            raise ValueError(f"vit patch_size {patch_size} must divide image_size {image_size}")
        if dim % heads:
            raise ValueError(f"vit dim {dim} must be divisible by heads {heads}")
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + patches, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.cls = ClsToken()
        self.classifier = nn.Linear(dim, num_classes)
        self.taps = {"stem": "patch_embed", **{f"stage{i + 1}": f"blocks.{i}" for i in range(depth)},
                     "embedding": "cls"}
        self.preact_taps: dict[str, str] = {}
        self.attention_taps = {f"block{i}": f"blocks.{i}.attn.probs" for i in range(depth)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"vit was built for {self.image_size}x{self.image_size} inputs (its position "
                             f"embedding has that many patches), got {x.shape[-2]}x{x.shape[-1]}")
        x = self.patch_embed(x).flatten(2).transpose(1, 2)              # (B, N, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1)  # (B, 1 + N, dim)
        x = self.blocks(x + self.pos_embed)                             # (B, 1 + N, dim)
        return self.classifier(self.cls(self.norm(x)))                  # (B, num_classes)


MODELS.register("vit_tiny", family="vit", paper=PAPER)(ViT)
