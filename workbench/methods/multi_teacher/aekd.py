"""AEKD: Du, You, Li, Wu, Wang, Qian & Zhang, "Agree to Disagree: Adaptive Ensemble Knowledge
Distillation in Gradient Space", NeurIPS 2020.

Paper: https://proceedings.neurips.cc/paper/2020/hash/91c77393975889bd08f301c9e13a44b7-Abstract.html
(code: https://github.com/AnTuo1998/AE-KD)

Averaging K teachers' KD losses lets teachers that disagree cancel each other's gradients. AEKD
treats each teacher's KD loss L_k as one objective of a multi-objective problem and looks for a
common descent direction in the gradient space of the student's logits z: the minimum-norm point
of the convex hull of the teachers' gradients, with each weight capped by a tolerance C so that no
single teacher takes over:

    alpha* = argmin_alpha || sum_k alpha_k grad_z L_k ||^2   s.t.  sum_k alpha_k = 1,  0 <= alpha_k <= C
    L_AEKD = sum_k alpha*_k L_k,     L_k = T^2 KL(softmax(v_k / T) || softmax(z / T))

The weights are constants of the step (no gradient flows through them). The gradients are cheap:
grad_z L_k = T (softmax(z/T) - softmax(v_k/T)) / B for the batch-mean KD loss, so no extra backward
pass is needed. As in the authors' code, each teacher's gradient is averaged over the batch (a
C-dimensional vector per teacher) before the min-norm problem; its tolerance C = 0.6 (``-C``),
clipped to [1/K, 1] (C = 1/K forces equal weights, C = 1 is the unconstrained min-norm point),
their KD settings T = 4, weight 0.9. The capped-simplex problem is solved on the device by
projected gradient descent (a fixed number of steps, no host synchronisation), where the
authors call scikit-learn's one-class SVM on the host; both solve the same quadratic program.
``method.teacher_weights`` holds the last step's alpha* (detached), for plots.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..base import register_method
from .ensemble import MultiTeacherMethod

#: projected-gradient steps of the min-norm solver (K is a handful of teachers: this converges)
SOLVER_STEPS = 100


def project_capped_simplex(v: torch.Tensor, cap: float) -> torch.Tensor:
    """Euclidean projection of v (K,) onto {x : sum x = 1, 0 <= x <= cap}, for 1/K <= cap.

    x_i(tau) = clamp(v_i - tau, 0, cap); g(tau) = sum_i x_i(tau) falls piecewise linearly with tau,
    with kinks at v_i and v_i - cap. The root of g = 1 lies between the last kink with g >= 1 and
    the first with g <= 1, on one linear piece: interpolate there. No loop, no host sync.
    """
    kinks = torch.cat([v, v - cap])                                                # (2K,)
    g = (v[None, :] - kinks[:, None]).clamp(0.0, cap).sum(1)                       # (2K,)
    slack = 1e-9  # rounding: g at the lowest kink is K * cap >= 1 up to the last bit
    lo = torch.where(g >= 1 - slack, kinks, torch.full_like(kinks, -torch.inf)).max()
    hi = torch.where(g <= 1 + slack, kinks, torch.full_like(kinks, torch.inf)).min()
    g_lo = (v - lo).clamp(0.0, cap).sum()
    g_hi = (v - hi).clamp(0.0, cap).sum()
    slope = g_lo - g_hi
    tau = torch.where(slope > 0, lo + (g_lo - 1) * (hi - lo) / slope.clamp_min(1e-30), lo)
    return (v - tau).clamp(0.0, cap)


def min_norm_weights(gradients: torch.Tensor, cap: float, steps: int = SOLVER_STEPS) -> torch.Tensor:
    """argmin over the capped simplex of || sum_k alpha_k g_k ||^2 for gradients (K, M): (K,)."""
    g = gradients.detach().double().flatten(1)                                     # (K, M)
    gram = g @ g.T                                                                 # (K, K)
    count = g.shape[0]
    cap = min(max(cap, 1.0 / count), 1.0)
    # step 1/L with L = 2 lambda_max(G) <= 2 trace(G): always a descent step
    step = 1.0 / (2 * gram.diagonal().sum()).clamp_min(1e-30)
    alpha = torch.full((count,), 1.0 / count, dtype=g.dtype, device=g.device)
    for _ in range(steps):
        alpha = project_capped_simplex(alpha - step * 2 * (gram @ alpha), cap)
    return alpha.to(gradients.dtype)


def aekd_loss(student_logits: torch.Tensor, teacher_logits: Sequence[torch.Tensor], temperature: float,
              tolerance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_k alpha*_k L_k, alpha* (K,)). Logits (B, C)."""
    log_p = F.log_softmax(student_logits.float() / temperature, dim=1)             # (B, C)
    log_q = [F.log_softmax(v.float() / temperature, dim=1) for v in teacher_logits]
    losses = torch.stack([F.kl_div(log_p, lq, reduction="batchmean", log_target=True)
                          for lq in log_q]) * temperature ** 2                     # (K,)
    with torch.no_grad():
        # grad_z L_k = T (p - q_k) / B; the batch average, up to the factor T / B common to all k
        p = log_p.exp()
        gradients = torch.stack([(p - lq.exp()).mean(0) for lq in log_q])          # (K, C)
        alpha = min_norm_weights(gradients, tolerance)
    return (alpha * losses).sum(), alpha


@register_method("aekd", category="multi_teacher", paper="Agree to Disagree: Adaptive Ensemble "
                 "Knowledge Distillation in Gradient Space", venue="NeurIPS", year=2020,
                 link="https://proceedings.neurips.cc/paper/2020/hash/91c77393975889bd08f301c9e13a44b7-Abstract.html",
                 notebook="32_multi_teacher")
class AEKD(MultiTeacherMethod):
    """Adaptive teacher weights from the min-norm point of their KD gradients; term ``kl``.
    ``tolerance``: the cap C on any teacher's weight."""

    constraints = {"weight": "nonnegative", "temperature": "positive", "tolerance": "unit"}

    def __init__(self, temperature: float = 4.0, tolerance: float = 0.6, weight: float = 0.9):
        super().__init__(weight=weight)
        self.temperature = temperature
        self.tolerance = tolerance
        self.teacher_weights: torch.Tensor | None = None

    def forward(self, student, teacher, batch):
        loss, alpha = aekd_loss(student.logits, self.teacher_logits(teacher), self.temperature,
                                self.tolerance)
        self.teacher_weights = alpha
        return {"kl": loss}
