"""NormKD: Chi, Zheng, Wang & Zhang, "NormKD: Normalized Logits for Knowledge Distillation", 2023.

arXiv 2308.00520, https://arxiv.org/abs/2308.00520

One temperature for every sample softens some samples' logits too much and others too little.
NormKD treats each sample's logits as roughly normal and gives it its own temperature, in
proportion to their standard deviation sigma (over the K classes):

    T_i^S = T_norm * sigma(z_i),   T_i^T = T_norm * sigma(v_i)

    L_NormKD = 1/B * sum_i (T_i^T)^2 * KL(softmax(v_i / T_i^T) || softmax(z_i / T_i^S))

After the division every sample's logits have the same spread, 1 / T_norm. The authors' code
uses T_norm = 2 on CIFAR-100 (KD weight 0.9, cross-entropy 0.1) and T_norm = 1 on ImageNet (0.5
and 0.5); sigma is the sample standard deviation (``torch.std``), as there. Since a softmax
ignores shifts, this is Logit Standardization's distribution (``ls.py``) with T = T_norm; only
the per-sample T^2 weight differs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import Method, register_method

#: smallest temperature, so that a sample whose logits are all equal stays finite (loss 0)
MIN_SIGMA = 1e-7


def normkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature_norm: float,
                reduction: str = "mean") -> torch.Tensor:
    """NormKD, averaged over the batch (``reduction="none"``: per sample, (B,)). Logits: (B, K)."""
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction={reduction!r} is not valid; choose 'mean' or 'none'")
    z, v = student_logits.float(), teacher_logits.float()   # the std of bf16 logits is too coarse
    t_student = temperature_norm * z.std(dim=1, keepdim=True).clamp_min(MIN_SIGMA)   # (B, 1)
    t_teacher = temperature_norm * v.std(dim=1, keepdim=True).clamp_min(MIN_SIGMA)   # (B, 1)
    log_p = F.log_softmax(z / t_student, dim=1)                                       # (B, K)
    log_q = F.log_softmax(v / t_teacher, dim=1)                                       # (B, K)
    kl = F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(dim=1)         # (B,)
    loss = t_teacher.squeeze(1) ** 2 * kl
    return loss.mean() if reduction == "mean" else loss


@register_method("normkd", category="logit", paper="NormKD: Normalized Logits for Knowledge Distillation",
                 venue="arXiv preprint", year=2023, link="https://arxiv.org/abs/2308.00520",
                 notebook="10_sources_logit")
class NormKD(Method):
    """NormKD: one term ``kl``. ``temperature_norm`` is the paper's T_norm, the scale of each
    sample's temperature in units of its logits' standard deviation; ``weight`` 0.9 as the
    authors' code (with cross-entropy weight 0.1 there)."""

    constraints = {"weight": "nonnegative", "temperature_norm": "positive"}

    def __init__(self, temperature_norm: float = 2.0, weight: float = 0.9):
        super().__init__(weight=weight)
        self.temperature_norm = temperature_norm

    def forward(self, student, teacher, batch):
        return {"kl": normkd_loss(student.logits, teacher.logits, self.temperature_norm)}
