"""AT: Zagoruyko & Komodakis, "Paying More Attention to Attention: Improving the Performance of
Convolutional Neural Networks via Attention Transfer", ICLR 2017.

arXiv 1612.03928, https://arxiv.org/abs/1612.03928

A layer's activation-based spatial attention map sums the channels' absolute activations raised to
the power p: for A in R^{C x H x W}, Q = vec(F(A)) with F(A) = sum_c |A_c|^p (p = 2). The student
matches the teacher's L2-normalised maps at every paired layer j:

    L_AT = beta / 2 * sum_j || Q_S^j / ||Q_S^j||_2 - Q_T^j / ||Q_T^j||_2 ||_p

The authors' code (and mdistiller, RepDistiller) computes each pair's term as the squared difference
of the normalised maps averaged over positions and batch ("beta ... divided by number of elements
in attention map and batch size") with beta = 1000, which is the default ``weight``
here (mdistiller ``AT.FEAT_WEIGHT = 1000``, RepDistiller ``-b 1000``). The channel mean instead of
the sum changes nothing after normalisation. Maps of different spatial size are average-pooled to
the smaller, as mdistiller and RepDistiller do; channel counts may differ freely.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import Method, register_method
from ._maps import as_map, check_pairs, pool_to_common, tap_tuple


def attention_map(feature: torch.Tensor, p: float) -> torch.Tensor:
    """Q / ||Q||_2 with Q = vec(mean_c |A_c|^p): (B, C, H, W) -> (B, H*W)."""
    return F.normalize(feature.abs().pow(p).mean(1).flatten(1), dim=1)


def at_loss(student: torch.Tensor, teacher: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Mean squared difference of the normalised attention maps of two (B, ., H, W) maps."""
    return (attention_map(student, p) - attention_map(teacher, p)).pow(2).mean()


@register_method("at", category="feature", paper="Paying More Attention to Attention: Improving the "
                 "Performance of Convolutional Neural Networks via Attention Transfer",
                 venue="ICLR", year=2017, link="https://arxiv.org/abs/1612.03928",
                 notebook="11_sources_feature")
class AT(Method):
    """Attention transfer summed over the paired stages (default: every stage, aligned from the
    deepest when the two models have different numbers of stages)."""

    constraints = {"weight": "nonnegative", "p": "positive"}
    student_taps = ("@stages",)
    teacher_taps = ("@stages",)

    def __init__(self, p: float = 2.0, weight: float = 1000.0, student_taps=student_taps,
                 teacher_taps=teacher_taps):
        super().__init__(weight=weight)
        self.p = p
        self.student_taps = tap_tuple(student_taps)
        self.teacher_taps = tap_tuple(teacher_taps)

    def setup(self, student, teacher):
        check_pairs("at", self.tap_pairs())

    def forward(self, student, teacher, batch):
        total = 0.0
        for s_tap, t_tap in self.tap_pairs():
            f_s, f_t = pool_to_common(as_map(student.features[s_tap], s_tap),
                                      as_map(teacher.features[t_tap], t_tap).detach())
            total = total + at_loss(f_s, f_t, self.p)
        return {"attention": total}
