"""Averaged ensemble targets: KD from the mean of several teachers' softened predictions.

Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", NeurIPS Deep Learning
Workshop 2015, arXiv 1503.02531, https://arxiv.org/abs/1503.02531 (section 4: an ensemble distilled
into one model with the ensemble's averaged soft targets); the multi-teacher baseline of You, Xu,
Xu & Tao, "Learning from Multiple Teacher Networks", KDD 2017.

With K teachers' logits v_k, the student's z and temperature T:

    q_bar = 1/K sum_k softmax(v_k / T),   p = softmax(z / T)
    L = T^2 * KL(q_bar || p)

Averaging probabilities (not losses) gives one target that the student can match exactly; the
average of the K KD losses (AEKD's "AVERAGE_LOSS" baseline) differs from it by the teachers'
spread, sum_k KL(q_k || q_bar) / K, which no student can remove. T = 4 and weight 0.9 are the
RepDistiller/AE-KD CIFAR settings for KD.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..base import register_method
from .ensemble import MultiTeacherMethod


def ensemble_kd_loss(student_logits: torch.Tensor, teacher_logits: Sequence[torch.Tensor],
                     temperature: float) -> torch.Tensor:
    """T^2 KL(mean_k softmax(v_k/T) || softmax(z/T)), averaged over the batch. Logits (B, C)."""
    log_p = F.log_softmax(student_logits.float() / temperature, dim=1)                    # (B, C)
    q_bar = torch.stack([F.softmax(v.float() / temperature, dim=1) for v in teacher_logits]).mean(0)
    # KL(q || p) = sum_i q_i log q_i - q_i log p_i; xlogy makes 0 log 0 = 0
    kl = (torch.special.xlogy(q_bar, q_bar) - q_bar * log_p).sum(1)                       # (B,)
    return kl.mean() * temperature ** 2


@register_method("ensemble_kd", category="multi_teacher", paper="Distilling the Knowledge in a Neural "
                 "Network", venue="NeurIPS Deep Learning Workshop", year=2015,
                 link="https://arxiv.org/abs/1503.02531", notebook="32_multi_teacher")
class EnsembleKD(MultiTeacherMethod):
    """KD to the teachers' averaged soft targets; term ``kl``. The teacher is a
    :class:`~workbench.methods.multi_teacher.MultiTeacher` (or one model: plain KD)."""

    constraints = {"weight": "nonnegative", "temperature": "positive"}

    def __init__(self, temperature: float = 4.0, weight: float = 0.9):
        super().__init__(weight=weight)
        self.temperature = temperature

    def forward(self, student, teacher, batch):
        return {"kl": ensemble_kd_loss(student.logits, self.teacher_logits(teacher), self.temperature)}
