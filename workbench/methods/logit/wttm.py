"""WTTM: Zheng & Yang, "Knowledge Distillation Based on Transformed Teacher Matching", ICLR 2024.

arXiv 2402.11148, https://arxiv.org/abs/2402.11148

Weighted TTM (see ``ttm.py`` for TTM). A smooth transformed teacher is harder to match than a
peaked one, so WTTM weighs each sample by the power sum of the teacher's distribution
p_t = softmax(v), gamma = 1 / T:

    U_gamma(p_t) = sum_j p_t(j)^gamma        (Renyi entropy: H_gamma = log U_gamma / (1 - gamma))

    L_WTTM = beta / B * sum_x U_gamma(p_t^x) * KL(p_t^T || softmax(z))

U_gamma grows with the teacher's entropy: 1 for a one-hot teacher, K^(1 - gamma) for a uniform
one. The weight depends on K, so beta does too. The official repository's example combines WTTM
(gamma = 0.2, i.e. T = 5, beta = 4) with CRD on CIFAR-100; the paper lists T and beta for every pair
in its appendix A.4.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import Method, register_method
from .ttm import power_transform


def wttm_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
              reduction: str = "mean") -> torch.Tensor:
    """U_gamma(p_t) * KL(p_t^T || softmax(z)), averaged over the batch (``"none"``: per sample)."""
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction={reduction!r} is not valid; choose 'mean' or 'none'")
    log_q = F.log_softmax(student_logits, dim=1)                        # student at T = 1
    log_target, power_sum = power_transform(teacher_logits, temperature)
    kl = F.kl_div(log_q, log_target, reduction="none", log_target=True).sum(dim=1)   # (B,)
    weighted = power_sum * kl                                           # sample-adaptive weight
    return weighted.mean() if reduction == "mean" else weighted


@register_method("wttm", category="logit",
                 paper="Knowledge Distillation Based on Transformed Teacher Matching", venue="ICLR",
                 year=2024, link="https://arxiv.org/abs/2402.11148", notebook="10_sources_logit")
class WTTM(Method):
    """Weighted transformed teacher matching: one term ``kl``. ``temperature`` is T (gamma = 1 / T);
    ``weight`` is the paper's beta."""

    constraints = {"weight": "nonnegative", "temperature": "positive"}

    def __init__(self, temperature: float = 5.0, weight: float = 4.0):
        super().__init__(weight=weight)
        self.temperature = temperature

    def forward(self, student, teacher, batch):
        return {"kl": wttm_loss(student.logits, teacher.logits, self.temperature)}
