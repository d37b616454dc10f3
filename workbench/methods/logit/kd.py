"""KD: Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.

arXiv 1503.02531, https://arxiv.org/abs/1503.02531

The student matches the teacher's softened class distribution. With logits z (student) and v
(teacher) and temperature T, p_i = softmax(z / T)_i and q_i = softmax(v / T)_i:

    L_KD = T^2 * KL(q || p) = T^2 * sum_i q_i (log q_i - log p_i)

The T^2 factor keeps the gradient's magnitude roughly independent of T (the gradients of the soft
term scale as 1 / T^2), so the soft and hard losses can be mixed with fixed weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import Method, register_method


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(v/T) || softmax(z/T)), averaged over the batch. Logits: (B, K)."""
    log_p = F.log_softmax(student_logits / temperature, dim=1)       # (B, K)
    log_q = F.log_softmax(teacher_logits / temperature, dim=1)       # (B, K)
    # KL(q || p) = sum_i q_i (log q_i - log p_i); log_target avoids log(0) for tiny q_i
    kl = F.kl_div(log_p, log_q, reduction="batchmean", log_target=True)
    return kl * temperature ** 2


@register_method("kd", category="logit", paper="Distilling the Knowledge in a Neural Network",
                 venue="NeurIPS Deep Learning Workshop", year=2015,
                 link="https://arxiv.org/abs/1503.02531", notebook="10_sources_logit")
class KD(Method):
    """Classic KD. ``weight`` is the soft-target weight (the paper's alpha; the trainer's
    ``task_weight`` weighs the hard cross-entropy)."""

    constraints = {"weight": "nonnegative", "temperature": "positive"}

    def __init__(self, temperature: float = 4.0, weight: float = 0.9):
        super().__init__(weight=weight)
        self.temperature = temperature

    def forward(self, student, teacher, batch):
        return {"kl": kd_loss(student.logits, teacher.logits, self.temperature)}
