"""NST: Huang & Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer", 2017.

arXiv 1707.01219, https://arxiv.org/abs/1707.01219

Each channel's activations over the HW positions are one sample of a layer's "neuron selectivity"
distribution: f^{k.} in R^{HW}, L2-normalised. The student's C_S samples s_j and the teacher's C_T
samples t_i are matched by the squared maximum mean discrepancy with a kernel k:

    L_MMD^2 = 1/C_T^2 sum_{i,i'} k(t_i, t_i') + 1/C_S^2 sum_{j,j'} k(s_j, s_j')
              - 2/(C_T C_S) sum_{i,j} k(t_i, s_j)

with the polynomial kernel k(x, y) = (x^T y + c)^d, d = 2, c = 0 (the paper's best on CIFAR),
averaged over the batch and summed over the paired stages. The weight is 50 (mdistiller
``NST.FEAT_WEIGHT = 50``, RepDistiller ``-b 50``). No connector
is needed: the two sides may have any numbers of channels, but their samples must live in the same
R^{HW}, so the larger map is average-pooled to the smaller (as mdistiller and RepDistiller do).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import Method, register_method
from ._maps import as_map, check_pairs, pool_to_common, tap_tuple


def polynomial_kernel_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean of (a_i^T b_j)^2 over the batch and all channel pairs; a: (B, C_a, N), b: (B, C_b, N)."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()               # (B, C_a, C_b) -> scalar


def nst_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Squared MMD (polynomial kernel, d=2, c=0) between two (B, ., H, W) maps' channel samples."""
    s = F.normalize(student.flatten(2), dim=2)                          # (B, C_s, HW)
    t = F.normalize(teacher.flatten(2), dim=2)                          # (B, C_t, HW)
    k = polynomial_kernel_mean
    return k(t, t) + k(s, s) - 2 * k(s, t)


@register_method("nst", category="feature", paper="Like What You Like: Knowledge Distill via Neuron "
                 "Selectivity Transfer", venue="arXiv", year=2017,
                 link="https://arxiv.org/abs/1707.01219", notebook="11_sources_feature")
class NST(Method):
    """Neuron selectivity transfer summed over the paired stages (default: every stage)."""

    constraints = {"weight": "nonnegative"}
    student_taps = ("@stages",)
    teacher_taps = ("@stages",)

    def __init__(self, weight: float = 50.0, student_taps=student_taps, teacher_taps=teacher_taps):
        super().__init__(weight=weight)
        self.student_taps = tap_tuple(student_taps)
        self.teacher_taps = tap_tuple(teacher_taps)

    def setup(self, student, teacher):
        check_pairs("nst", self.tap_pairs())

    def forward(self, student, teacher, batch):
        total = 0.0
        for s_tap, t_tap in self.tap_pairs():
            f_s, f_t = pool_to_common(as_map(student.features[s_tap], s_tap),
                                      as_map(teacher.features[t_tap], t_tap).detach())
            total = total + nst_loss(f_s, f_t)
        return {"mmd": total}
