"""CC: Peng, Jin, Liu, Zhou, Wu, Liu, Li & Zhang, "Correlation Congruence for Knowledge
Distillation", ICCV 2019.

arXiv 1904.01802, https://arxiv.org/abs/1904.01802

Beyond matching each instance (KD), the student matches the correlation between instances. With
f_i the (L2-normalised) embeddings of the n samples of a batch and a kernel k, the correlation
matrix is psi(F) = [k(f_i, f_j)] (n x n) and

    L_CC = 1/n^2 * || psi(F_t) - psi(F_s) ||_2^2

The kernel is a Gaussian RBF, k(f_i, f_j) = exp(-gamma ||f_i - f_j||^2), approximated by its
P-order Taylor expansion; for unit vectors ||f_i - f_j||^2 = 2 - 2 f_i.f_j, so

    k(f_i, f_j) ~= sum_{p=0}^{P} exp(-2 gamma) * (2 gamma)^p / p! * (f_i . f_j)^p

with gamma = 0.4 and P = 2 (the paper's setting, and KD-Zoo's reimplementation of it).

Connectors: as in RepDistiller, each network's embedding goes through its own linear projection
to ``embed_dim`` = 128 first (both projections train with the student; the teacher network stays
frozen). ``embed_dim=None`` drops them: psi(F) is n x n, so the paper's formulation needs none.
Note that trainable projections on both sides can also lower L_CC by making the two projected
correlation matrices alike (in the limit, both constant), without the student changing.

Weight: RepDistiller's CC weight 0.02 belongs to a different loss (the author-supplied
sum over consecutive samples of |f_s - f_t| products, not the kernel above); with the Taylor
kernel, KD-Zoo uses 100, which is the default here.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...probes.similarity import cosine_similarity_matrix
from ..base import Method, register_method
from .common import as_taps, ensure_connector, float32, module_key


def correlation_matrix(embeddings: torch.Tensor, gamma: float, order: int) -> torch.Tensor:
    """Taylor-approximated Gaussian RBF kernel of the normalised embeddings: (n, ...) -> (n, n)."""
    cosine = cosine_similarity_matrix(embeddings)                         # f_i . f_j, (n, n)
    kernel = torch.zeros_like(cosine)
    for p in range(order + 1):                                            # P + 1 terms, not samples
        kernel = kernel + math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * cosine ** p
    return kernel


def cc_loss(student: torch.Tensor, teacher: torch.Tensor, gamma: float = 0.4,
            order: int = 2) -> torch.Tensor:
    """1/n^2 ||psi(F_t) - psi(F_s)||^2 for embeddings (n, ...) of any widths."""
    return F.mse_loss(correlation_matrix(student, gamma, order),
                      correlation_matrix(teacher, gamma, order))


@register_method("cc", category="similarity", paper="Correlation Congruence for Knowledge "
                 "Distillation", venue="ICCV", year=2019, link="https://arxiv.org/abs/1904.01802",
                 notebook="12_sources_similarity")
class CC(Method):
    """Correlation congruence of (projected) embeddings; ``gamma`` and ``order`` (P) set the
    kernel, ``weight`` = 100 (KD-Zoo's weight for this kernel loss)."""

    constraints = {"weight": "nonnegative", "gamma": "positive", "order": "nonnegative"}

    def __init__(self, gamma: float = 0.4, order: int = 2, weight: float = 100.0,
                 embed_dim: int | None = 128, student_taps=("@embedding",),
                 teacher_taps=("@embedding",)):
        super().__init__(weight=weight)
        if embed_dim is not None and (isinstance(embed_dim, bool) or not isinstance(embed_dim, int)
                                      or embed_dim < 1):
            raise ValueError(f"CC: embed_dim={embed_dim!r} is not valid; it must be a positive "
                             "integer, or None for no projection")
        self.gamma = gamma
        self.order = order
        self.embed_dim = embed_dim
        self.student_taps = as_taps(student_taps)
        self.teacher_taps = as_taps(teacher_taps)
        self.embed_student = nn.ModuleDict()   # student tap -> Linear, built by setup()
        self.embed_teacher = nn.ModuleDict()   # teacher tap -> Linear

    def __setattr__(self, key, value):
        # the Taylor order counts terms: a whole number, checked live too
        if key == "order" and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                   and float(value).is_integer()):
            raise ValueError(f"CC: order={value!r} is not valid; it must be a whole number >= 0")
        super().__setattr__(key, value)

    def setup(self, student, teacher):
        if self.embed_dim is None:
            return
        for s_tap, t_tap in self.tap_pairs():
            s_dim = student.features[s_tap].flatten(1).shape[1]
            t_dim = teacher.features[t_tap].flatten(1).shape[1]
            ensure_connector(self.embed_student, module_key(s_tap), s_dim, self.embed_dim, nn.Linear)
            ensure_connector(self.embed_teacher, module_key(t_tap), t_dim, self.embed_dim, nn.Linear)

    def forward(self, student, teacher, batch):
        loss = None
        for s_tap, t_tap in self.tap_pairs():
            s = student.features[s_tap].flatten(1)                        # (n, D_s)
            t = teacher.features[t_tap].flatten(1)                        # (n, D_t)
            if self.embed_dim is not None:
                s = self.embed_student[module_key(s_tap)](s)                  # (n, embed_dim)
                t = self.embed_teacher[module_key(t_tap)](t)                  # (n, embed_dim)
            with float32(s):
                term = cc_loss(s.float(), t.float(), self.gamma, int(self.order))
            loss = term if loss is None else loss + term
        return {"cc": loss}
