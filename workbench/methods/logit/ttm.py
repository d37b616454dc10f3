"""TTM: Zheng & Yang, "Knowledge Distillation Based on Transformed Teacher Matching", ICLR 2024.

arXiv 2402.11148, https://arxiv.org/abs/2402.11148

KD softens both sides with one temperature. TTM keeps it on the teacher only and reads it as a
power transform of the teacher's distribution p_t = softmax(v), with gamma = 1 / T:

    p_t^T(i) = p_t(i)^gamma / U_gamma(p_t) = softmax(v / T)_i,   U_gamma(p) = sum_j p(j)^gamma

The student's plain prediction q = softmax(z) (T = 1) matches the transformed teacher:

    L_TTM = beta * KL(p_t^T || q)          (no T^2 factor: the student is not tempered)

Compared with KD, the paper shows that TTM carries an extra Renyi-entropy term of the student's
prediction, a regulariser that keeps the student from becoming over-confident. The official
repository's example uses gamma = 0.1 (T = 10) and beta = 45 (vgg13 -> vgg8 on CIFAR-100); the paper
lists T and beta for every pair in its appendix A.4.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import Method, register_method


def power_transform(teacher_logits: torch.Tensor,
                    temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p_t^T, U_gamma(p_t))``: the transformed teacher (B, K) and the power sum (B,).

    Computed in log space: log p_t^T = gamma log p_t - log U_gamma, which equals
    log_softmax(v / T) exactly.
    """
    gamma = 1.0 / temperature
    log_p = F.log_softmax(teacher_logits, dim=1)                        # log p_t, (B, K)
    log_power_sum = torch.logsumexp(gamma * log_p, dim=1)               # log U_gamma(p_t), (B,)
    return gamma * log_p - log_power_sum[:, None], log_power_sum.exp()


def ttm_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
             reduction: str = "mean") -> torch.Tensor:
    """KL(p_t^T || softmax(z)), averaged over the batch (``"none"``: per sample). Logits: (B, K)."""
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction={reduction!r} is not valid; choose 'mean' or 'none'")
    log_q = F.log_softmax(student_logits, dim=1)                        # student at T = 1
    log_target, _ = power_transform(teacher_logits, temperature)
    kl = F.kl_div(log_q, log_target, reduction="none", log_target=True).sum(dim=1)   # (B,)
    return kl.mean() if reduction == "mean" else kl


@register_method("ttm", category="logit",
                 paper="Knowledge Distillation Based on Transformed Teacher Matching", venue="ICLR",
                 year=2024, link="https://arxiv.org/abs/2402.11148", notebook="10_sources_logit")
class TTM(Method):
    """Transformed teacher matching: one term ``kl``. ``temperature`` is T (the paper's gamma is
    1 / T); ``weight`` is the paper's beta."""

    constraints = {"weight": "nonnegative", "temperature": "positive"}

    def __init__(self, temperature: float = 10.0, weight: float = 45.0):
        super().__init__(weight=weight)
        self.temperature = temperature

    def forward(self, student, teacher, batch):
        return {"kl": ttm_loss(student.logits, teacher.logits, self.temperature)}
