"""ReviewKD: Chen, Liu, Zhao & Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021.

arXiv 2104.09044, https://arxiv.org/abs/2104.09044

Each teacher level i is taught by a *fusion* of the student's level i and all its deeper levels,
built deep to shallow by attention-based fusion (ABF): a level's student feature F_i, projected to
M channels (1x1 conv + BN), is mixed with the deeper fused feature R_{i+1} (resized to F_i's size)
by two spatial attention maps predicted from both, and a 3x3 conv + BN maps the mix to the
teacher's channels:

    R_i = a_i * conv1x1(F_i) + b_i * resize(R_{i+1}),   [a_i, b_i] = sigmoid(conv1x1([., .]))
    S_i = conv3x3(resize_to_teacher(R_i))

The hierarchical context loss (HCL) compares S_i and the teacher's T_i at full resolution and after
average pooling to 4x4, 2x2, 1x1 (pyramid levels smaller than the map), halving the weight at each
level and normalising by the total weight; the levels are summed:

    L_HCL = sum_i [MSE(S_i, T_i) + sum_k 2^-k MSE(pool_k(S_i), pool_k(T_i))] / (1 + sum_k 2^-k)

As in the authors' CIFAR code (and mdistiller), the levels are every stage plus the pooled
penultimate vector as a 1x1 map, the teacher's stages are taken before their ReLU (``@stages_pre``;
models without pre-ReLU taps, like ViT, fall back to ``@stages``), M = min(512, channels of the
student's deepest level), and resizing is nearest-neighbour. The default weight is 1.0, the default
of the authors' ``train.py`` and of mdistiller; their CIFAR scripts use 5.0 for most pairs
(resnet32x4 -> resnet8x4 included), 8.0, 1.0 or 0.6 for others. The authors ramp the loss up
linearly over the first 20 of 240 epochs; here ``warmup`` counts training steps instead (as DKD's
does in this workbench): the term is scaled by min((steps done + 1) / warmup, 1), and the step
count is a buffer, so it survives a checkpoint and resume.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...taps import declared_preact_taps
from ..base import Method, register_method
from ._maps import as_map, check_pairs, tap_tuple

#: pyramid pooling sizes of the hierarchical context loss
PYRAMID = (4, 2, 1)


def hcl_loss(student_levels: list[torch.Tensor], teacher_levels: list[torch.Tensor]) -> torch.Tensor:
    """Hierarchical context loss summed over levels; each pair (B, C, H, W) of equal shape."""
    total = 0.0
    for s, t in zip(student_levels, teacher_levels):
        loss, level_weight, weight_sum = F.mse_loss(s, t), 1.0, 1.0
        for size in PYRAMID:
            if size >= s.shape[-2]:        # a pyramid level must be smaller than the map itself
                continue
            level_weight /= 2
            loss = loss + level_weight * F.mse_loss(F.adaptive_avg_pool2d(s, size),
                                                    F.adaptive_avg_pool2d(t, size))
            weight_sum += level_weight
        total = total + loss / weight_sum
    return total


class ABF(nn.Module):
    """Attention-based fusion of one student level with the deeper fused feature."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False),
                                    nn.BatchNorm2d(mid_channels))
        self.out = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(out_channels))
        # two attention maps (for this level and the deeper one) from both, concatenated
        self.attention = (nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid())
                          if fuse else None)
        nn.init.kaiming_uniform_(self.reduce[0].weight, a=1)   # as the authors
        nn.init.kaiming_uniform_(self.out[0].weight, a=1)

    def forward(self, x: torch.Tensor, deeper: torch.Tensor | None, out_size: tuple[int, int]):
        """x (B, C_s, H, W), deeper (B, M, h, w) or None -> S (B, C_t, *out_size), R (B, M, ...)."""
        x = self.reduce(x)                                              # (B, M, H, W)
        if self.attention is not None:
            deeper = F.interpolate(deeper, size=x.shape[-2:], mode="nearest")
            z = self.attention(torch.cat([x, deeper], dim=1))           # (B, 2, H, W)
            x = x * z[:, :1] + deeper * z[:, 1:]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.out(x), x


def _level(feature: torch.Tensor, tap: str) -> torch.Tensor:
    """A level as a map; the pooled vector (B, D) is a 1x1 map."""
    return feature[:, :, None, None] if feature.dim() == 2 else as_map(feature, tap)


@register_method("reviewkd", category="feature", paper="Distilling Knowledge via Knowledge Review",
                 venue="CVPR", year=2021, link="https://arxiv.org/abs/2104.09044",
                 notebook="11_sources_feature")
class ReviewKD(Method):
    """Knowledge review: ABF fusion of the student's levels (deep to shallow) and HCL per level."""

    min_batch_size = 2  # batch-norm in its fusion modules needs two samples
    constraints = {"weight": "nonnegative", "warmup": "nonnegative"}
    student_taps = ("@stages", "@embedding")
    teacher_taps = ("@stages_pre", "@embedding")

    def __init__(self, weight: float = 1.0, warmup: float = 100, student_taps=student_taps,
                 teacher_taps=teacher_taps):
        super().__init__(weight=weight)
        self.warmup = warmup
        # training forwards seen so far; a buffer, so checkpoints carry it
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.student_taps = tap_tuple(student_taps)
        self.teacher_taps = tap_tuple(teacher_taps)

    def bind(self, student_model, teacher_model):
        if teacher_model is not None and not declared_preact_taps(teacher_model):
            # no pre-ReLU taps (a ViT's blocks end without a ReLU): the stage outputs stand in
            fallback = {"@stages_pre": "@stages", "@last_pre": "@last"}
            taps = tuple(fallback.get(t, t) for t in self.teacher_taps)
            object.__setattr__(self, "teacher_taps", taps)
        super().bind(student_model, teacher_model)

    def setup(self, student, teacher):
        pairs = self.tap_pairs()
        check_pairs("reviewkd", pairs)
        s_shapes = [_level(student.features[s], s).shape for s, _ in pairs]
        t_shapes = [_level(teacher.features[t], t).shape for _, t in pairs]
        mid = min(512, s_shapes[-1][1])
        self.fusions = nn.ModuleList(ABF(s[1], mid, t[1], fuse=i < len(pairs) - 1)
                                     for i, (s, t) in enumerate(zip(s_shapes, t_shapes)))

    def forward(self, student, teacher, batch):
        pairs = self.tap_pairs()
        outputs: list[torch.Tensor] = []
        deeper = None
        for (s_tap, t_tap), fusion in zip(pairs[::-1], list(self.fusions)[::-1]):   # deep to shallow
            target_size = _level(teacher.features[t_tap], t_tap).shape[-2:]
            out, deeper = fusion(_level(student.features[s_tap], s_tap), deeper, target_size)
            outputs.insert(0, out)
        targets = [_level(teacher.features[t], t).detach() for _, t in pairs]
        ramp = 1.0 if self.warmup == 0 else ((self.steps_done + 1) / self.warmup).clamp(max=1.0)
        if self.training:
            self.steps_done.add_(1)
        return {"hcl": ramp * hcl_loss(outputs, targets)}
