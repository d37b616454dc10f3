"""ICKD: Liu, Huang, Lin, Xie, Wang, Chang & Liang, "Exploring Inter-Channel Correlation for
Diversity-preserved Knowledge Distillation", ICCV 2021.

arXiv 2202.03680, https://arxiv.org/abs/2202.03680

The student keeps the teacher's channels as diverse and as homologous as the teacher does by
matching the correlation between every two channels. With F in R^{c x h x w} a feature map, v(.)
flattening a channel's h x w map, and the student's map first projected to the teacher's c channels
by a 1x1 convolution C (with batch norm):

    G^F_{m,n} = kappa(v(f_m), v(f_n)) = v(f_m) . v(f_n)^T       (c x c inter-channel correlation)

    L_ICC = 1 / (b * c) * sum_batch || G~^T - G~^{C(S)} ||_F^2

where G~ divides each row of G by its L2 norm, as the authors' code does (their CIFAR-100 code:
last stage, 1x1 conv + BN connector, this reduction, weight beta = 2.5 with no KD term). G is
c x c whatever the spatial size, so the two maps may differ in h and w; ViT tokens count as
positions (channels = the token width D).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base import Method, register_method
from .common import (as_taps, channels, channels_positions, check_rank, ensure_connector, float32,
                     module_key)


def channel_correlation(features: torch.Tensor) -> torch.Tensor:
    """G~: the inter-channel Gram matrix with L2-normalised rows: (b, c, ...) -> (b, c, c)."""
    f = channels_positions(features)                                     # (b, c, P)
    return F.normalize(f @ f.transpose(1, 2), p=2, dim=2)                 # (b, c, c)


def ickd_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """sum ||G~_T - G~_S||_F^2 / (b * c); ``student`` already has the teacher's channel count."""
    g_s, g_t = channel_correlation(student), channel_correlation(teacher)
    if g_s.shape != g_t.shape:
        raise ValueError(f"ICKD needs equal channel counts after the connector: student "
                         f"{tuple(g_s.shape)}, teacher {tuple(g_t.shape)}")
    batch, width = g_t.shape[0], g_t.shape[1]
    return (g_t - g_s).pow(2).sum() / (batch * width)


@register_method("ickd", category="similarity", paper="Exploring Inter-Channel Correlation for "
                 "Diversity-preserved Knowledge Distillation", venue="ICCV", year=2021,
                 link="https://arxiv.org/abs/2202.03680", notebook="12_sources_similarity")
class ICKD(Method):
    """Inter-channel correlation of the last stage, student side through a 1x1 conv + BN to the
    teacher's width (always built, as in the authors' code); ``weight`` = 2.5 (their CIFAR-100 beta)."""

    constraints = {"weight": "nonnegative"}

    def __init__(self, weight: float = 2.5, student_taps=("@last",), teacher_taps=("@last",)):
        super().__init__(weight=weight)
        self.student_taps = as_taps(student_taps)
        self.teacher_taps = as_taps(teacher_taps)
        self.connectors = nn.ModuleDict()     # student tap -> 1x1 conv + BN, built by setup()

    def setup(self, student, teacher):
        for s_tap, t_tap in self.tap_pairs():
            s, t = student.features[s_tap], teacher.features[t_tap]
            check_rank(s, s_tap, "student")
            check_rank(t, t_tap, "teacher")
            ensure_connector(self.connectors, module_key(s_tap), channels(s), channels(t))

    def forward(self, student, teacher, batch):
        loss = None
        for s_tap, t_tap in self.tap_pairs():
            if module_key(s_tap) not in self.connectors:
                raise RuntimeError(f"ICKD has no connector for tap {s_tap!r}: setup() must run on a "
                                   "first batch before forward")
            s = self.connectors[module_key(s_tap)](student.features[s_tap])   # (b, c_T, ...)
            with float32(s):
                term = ickd_loss(s.float(), teacher.features[t_tap].float())
            loss = term if loss is None else loss + term
        return {"ickd": loss}
