"""CA-MKD: Zhang, Chen & Wang, "Confidence-Aware Multi-Teacher Knowledge Distillation",
ICASSP 2022.

arXiv 2201.00007, https://arxiv.org/abs/2201.00007

Teachers are not equally reliable on every sample. CA-MKD weighs teacher k on sample x by how well
it predicts the label there: with L_CE^k = CE(softmax(v_k), y) on x (eq. 1-2 of the paper),

    w^k = 1/(K - 1) * (1 - exp(L_CE^k) / sum_j exp(L_CE^j))        (sum_k w^k = 1)
    L_KD = sum_k w^k * T^2 * KL(softmax(v_k / T) || softmax(z / T))    (per sample, then the mean)

so a teacher with a low cross-entropy (confident and right) gets a large weight. For K = 2 this is
exactly softmax over teachers of -L_CE; for K > 2 it is flatter than that softmax. With one teacher
the weight is 1 (plain KD). The paper adds an intermediate-feature term weighted the same way; only
the logit term is implemented here (combine with a feature method for the rest). The authors' code
divides the weighted sum once more by K (its loss is sum_{k,b} w KL / (B K)); the paper's equation,
used here, does not. T = 4 (the RepDistiller KD temperature the authors' code inherits) and weight 1
(their ``-a 1``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..base import register_method
from .ensemble import MultiTeacherMethod


def confidence_weights(teacher_logits: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """w^k per sample from each teacher's cross-entropy on the label: (K, B), columns sum to 1."""
    ce = torch.stack([F.cross_entropy(v.float(), target, reduction="none") for v in teacher_logits])  # (K, B)
    if ce.shape[0] == 1:
        return torch.ones_like(ce)
    return (1.0 - F.softmax(ce, dim=0)) / (ce.shape[0] - 1)


def camkd_loss(student_logits: torch.Tensor, teacher_logits: Sequence[torch.Tensor],
               target: torch.Tensor, temperature: float) -> torch.Tensor:
    """sum_k w^k T^2 KL(softmax(v_k/T) || softmax(z/T)), averaged over the batch."""
    weights = confidence_weights(teacher_logits, target)                                  # (K, B)
    log_p = F.log_softmax(student_logits.float() / temperature, dim=1)                    # (B, C)
    kl = torch.stack([F.kl_div(log_p, F.log_softmax(v.float() / temperature, dim=1), reduction="none",
                               log_target=True).sum(1) for v in teacher_logits])          # (K, B)
    return (weights * kl).sum(0).mean() * temperature ** 2


@register_method("camkd", category="multi_teacher", paper="Confidence-Aware Multi-Teacher Knowledge "
                 "Distillation", venue="ICASSP", year=2022, link="https://arxiv.org/abs/2201.00007",
                 notebook="32_multi_teacher")
class CAMKD(MultiTeacherMethod):
    """Confidence-aware teacher weights per sample; term ``kl``."""

    constraints = {"weight": "nonnegative", "temperature": "positive"}

    def __init__(self, temperature: float = 4.0, weight: float = 1.0):
        super().__init__(weight=weight)
        self.temperature = temperature

    def forward(self, student, teacher, batch):
        return {"kl": camkd_loss(student.logits, self.teacher_logits(teacher), batch.y, self.temperature)}
