"""DKD: Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022.

arXiv 2203.08679, https://arxiv.org/abs/2203.08679

Split each softened distribution (temperature T) at the target class t. With p = softmax(z / T)
(student) and q = softmax(v / T) (teacher):

- the binary distribution b = [p_t, 1 - p_t]: how sure the network is of the target class;
- the non-target distribution p^_i = p_i / (1 - p_t), i != t: how it ranks the other classes.

Classic KD is then exactly (the paper's Eq. 5, per sample)

    KL(q || p) = KL(b^T || b^S) + (1 - q_t) * KL(q^ || p^)
               =      TCKD      + (1 - q_t) *   NCKD

so KD ties the weight of NCKD to the teacher's doubt 1 - q_t, which is small exactly where the
teacher is confident and its "dark knowledge" about the other classes is most reliable. DKD frees
the two parts:

    L_DKD = alpha * T^2 * TCKD + beta * T^2 * NCKD

with the paper's alpha = 1, beta = 8, T = 4 on CIFAR-100, and a linear warm-up of the whole loss
over the first epochs (20 of 240 on CIFAR-100), because a large beta is harsh on a random student.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import Method, register_method


def _kl(log_target: torch.Tensor, log_input: torch.Tensor) -> torch.Tensor:
    """KL(target || input) per row, from log-probabilities. (B, C) -> (B,)."""
    return F.kl_div(log_input, log_target, reduction="none", log_target=True).sum(dim=1)


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
             alpha: float | torch.Tensor, beta: float | torch.Tensor, temperature: float,
             reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """The two DKD terms ``(alpha * T^2 * TCKD, beta * T^2 * NCKD)``. Logits (B, K), target (B,).

    ``alpha`` and ``beta`` may be numbers or per-sample tensors (B,); with ``alpha = 1`` and
    ``beta = 1 - q_t`` the two terms add up to KD, sample by sample. ``reduction="none"`` returns
    per-sample terms (B,); ``"mean"`` averages over the batch.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction={reduction!r} is not valid; choose 'mean' or 'none'")
    batch, classes = student_logits.shape
    is_target = F.one_hot(target, classes).bool()                       # (B, K)

    def split(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log b = log [p_t, 1 - p_t] (B, 2) and the non-target logits (B, K - 1), at T."""
        scaled = logits / temperature
        others = scaled[~is_target].view(batch, classes - 1)            # (B, K - 1)
        log_total = scaled.logsumexp(dim=1)                             # (B,)
        log_p_target = scaled[is_target] - log_total                    # log p_t
        log_p_others = others.logsumexp(dim=1) - log_total              # log (1 - p_t), stable
        return torch.stack([log_p_target, log_p_others], dim=1), others

    log_b_student, others_student = split(student_logits)
    log_b_teacher, others_teacher = split(teacher_logits)
    # TCKD = KL(b^T || b^S)
    tckd = _kl(log_b_teacher, log_b_student)                            # (B,)
    # NCKD = KL(q^ || p^): softmax over the non-target classes alone is p_i / (1 - p_t)
    nckd = _kl(F.log_softmax(others_teacher, dim=1), F.log_softmax(others_student, dim=1))
    tckd = alpha * temperature ** 2 * tckd
    nckd = beta * temperature ** 2 * nckd
    if reduction == "mean":
        return tckd.mean(), nckd.mean()
    return tckd, nckd


@register_method("dkd", category="logit", paper="Decoupled Knowledge Distillation", venue="CVPR",
                 year=2022, link="https://arxiv.org/abs/2203.08679", notebook="10_sources_logit")
class DKD(Method):
    """Decoupled KD: terms ``tckd`` (target class) and ``nckd`` (non-target classes).

    ``warmup``: number of training steps over which both terms ramp linearly from 1/warmup to
    full weight (0: no warm-up). The paper ramps over epochs (20 of 240 on CIFAR-100, about 15,600
    steps at batch 64; 1 epoch on ImageNet); here the method counts its own training forwards in a
    buffer, so the ramp needs nothing from the trainer and survives a checkpoint and resume. Set
    it to about a twelfth of a run's steps to keep the paper's proportion.
    """

    constraints = {"weight": "nonnegative", "alpha": "nonnegative", "beta": "nonnegative",
                   "temperature": "positive", "warmup": "nonnegative"}

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0,
                 warmup: float = 100, weight: float = 1.0):
        super().__init__(weight=weight)
        self.alpha, self.beta = alpha, beta
        self.temperature = temperature
        self.warmup = warmup
        # training forwards seen so far; a buffer, so it is saved and restored with the method
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

    def warmup_factor(self) -> torch.Tensor | float:
        """The weight of the current step: min((steps_done + 1) / warmup, 1), on the device."""
        if self.warmup == 0:
            return 1.0
        return ((self.steps_done + 1) / self.warmup).clamp(max=1.0)

    def forward(self, student, teacher, batch):
        tckd, nckd = dkd_loss(student.logits, teacher.logits, batch.y, self.alpha, self.beta,
                              self.temperature)
        ramp = self.warmup_factor()
        if self.training:
            self.steps_done.add_(1)
        return {"tckd": ramp * tckd, "nckd": ramp * nckd}
