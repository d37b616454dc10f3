"""MGD: Yang, Li, Shao, Shi, Yuan & Yuan, "Masked Generative Distillation", ECCV 2022.

arXiv 2205.01529, https://arxiv.org/abs/2205.01529

The student does not imitate the teacher's feature T; it must *generate* it from a randomly masked
version of its own aligned feature f_align(S). A random mask drops a fraction lambda of the
positions (R_{i,j} ~ U(0, 1)):

    M_{i,j} = 0 if R_{i,j} < lambda, else 1

a generation block G (3x3 conv, ReLU, 3x3 conv) fills them in, and

    L_dis = sum_{k,i,j} ( T_{k,i,j} - G(f_align(S) * M)_{k,i,j} )^2,    L = alpha * L_dis

summed over channels and positions and averaged over the batch (the authors' code: ``MSELoss(
reduction="sum") / N``). Defaults for classification: alpha = 7e-5 (the ``weight``) and mask ratio
lambda = 0.5, the ratio the authors' classification loss documents (their ImageNet configs set 0.15
with a *channel* mask, which the authors found better for classification after the paper; the
paper masks spatial positions, as here). f_align is a 1x1 conv, present only when the channel
counts differ; the taps are the last stages. The authors require equal spatial sizes; here the
larger map is average-pooled to the smaller so every zoo pair runs.

The mask is drawn from torch's global generator (on the features' device), so the run's seed fixes
it and a checkpoint, which saves the CPU generator's state, resumes the same masks on CPU.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..base import Method, register_method
from ._maps import as_map, check_pairs, pool_to_common, tap_tuple


def random_mask(batch: int, height: int, width: int, ratio: float, device=None) -> torch.Tensor:
    """(B, 1, H, W) of 0 (masked, probability ``ratio``) and 1 (kept), from the global generator."""
    return (torch.rand(batch, 1, height, width, device=device) >= ratio).float()


def mgd_loss(aligned: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor,
             generate: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """sum (T - G(f_align(S) * M))^2 / B; aligned and teacher (B, C_t, H, W), mask (B, 1, H, W)."""
    generated = generate(aligned * mask.to(aligned.dtype))
    return (teacher - generated).pow(2).sum() / teacher.shape[0]


def generation_block(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(channels, channels, 3, padding=1))


@register_method("mgd", category="feature", paper="Masked Generative Distillation", venue="ECCV",
                 year=2022, link="https://arxiv.org/abs/2205.01529", notebook="11_sources_feature")
class MGD(Method):
    """Masked generative distillation on the last stages; ``weight`` is the paper's alpha."""

    constraints = {"weight": "nonnegative", "mask_ratio": "unit"}
    student_taps = ("@last",)
    teacher_taps = ("@last",)

    def __init__(self, mask_ratio: float = 0.5, weight: float = 7e-5, student_taps=student_taps,
                 teacher_taps=teacher_taps):
        super().__init__(weight=weight)
        self.mask_ratio = mask_ratio
        self.student_taps = tap_tuple(student_taps)
        self.teacher_taps = tap_tuple(teacher_taps)

    def setup(self, student, teacher):
        pairs = self.tap_pairs()
        check_pairs("mgd", pairs)
        aligns, generators = [], []
        for s_tap, t_tap in pairs:
            c_s = as_map(student.features[s_tap], s_tap).shape[1]
            c_t = as_map(teacher.features[t_tap], t_tap).shape[1]
            aligns.append(nn.Conv2d(c_s, c_t, 1) if c_s != c_t else nn.Identity())
            generators.append(generation_block(c_t))
        self.aligns = nn.ModuleList(aligns)
        self.generators = nn.ModuleList(generators)

    def forward(self, student, teacher, batch):
        total = 0.0
        for (s_tap, t_tap), align, generate in zip(self.tap_pairs(), self.aligns, self.generators):
            f_s, f_t = pool_to_common(as_map(student.features[s_tap], s_tap),
                                      as_map(teacher.features[t_tap], t_tap).detach())
            mask = random_mask(f_s.shape[0], *f_s.shape[-2:], self.mask_ratio, device=f_s.device)
            total = total + mgd_loss(align(f_s), f_t, mask, generate)
        return {"generation": total}
