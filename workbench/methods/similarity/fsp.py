"""FSP: Yim, Joo, Bae & Kim, "A Gift from Knowledge Distillation: Fast Optimization, Network
Minimization and Transfer Learning", CVPR 2017.

https://openaccess.thecvf.com/content_cvpr_2017/html/Yim_A_Gift_From_CVPR_2017_paper.html
(the paper has no arXiv version)

The "flow of solution procedure" from one layer to the next is the FSP (Gram) matrix of their
feature maps F1 (h x w x m) and F2 (h x w x n):

    G_{i,j}(x; W) = sum_{s=1}^{h} sum_{t=1}^{w} F1_{s,t,i}(x; W) * F2_{s,t,j}(x; W) / (h * w)

and the student matches the teacher's FSP matrices of corresponding layer pairs i = 1..n:

    L_FSP(W_t, W_s) = 1/N sum_x sum_{i=1}^{n} lambda_i * || G_i^T(x; W_t) - G_i^S(x; W_s) ||_2^2

with all lambda_i equal. Here the pairs are consecutive taps: (stem, stage1), (stage1, stage2), ...
as in the paper (a stage's input and output) and RepDistiller; a model without a ``stem`` tap starts
at stage 1. Where two maps of a pair differ in size, the larger is average-pooled to the smaller
(RepDistiller, KD-Zoo). ViT tokens count as positions (the larger sequence is pooled along it).

Deviations, and why:
- G_T and G_S must have the same shape, so each pair needs equal channel counts in the two
  networks. Where a student tap is narrower or wider than the teacher's, a 1x1 convolution + batch
  norm (trained with the student) maps it to the teacher's width first, as common
  reimplementations do; the paper only paired networks of equal widths. With equal widths
  (resnet8x4 <- resnet32x4) no connector is built.
- The squared norm is averaged over the matrix entries (RepDistiller's and KD-Zoo's reduction)
  rather than summed, so the loss does not grow with m * n; ``weight`` absorbs the constant.
- The paper (and RepDistiller, KD-Zoo) trains in two stages: first the student minimises L_FSP
  alone, then it trains on the task. Here L_FSP is added to the task loss at every step; for the
  paper's recipe, run ``distill`` with ``task_weight=0`` first, then train on the labels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...taps import TapError, resolve_tap
from ..base import Method, register_method
from .common import (as_taps, channels, check_rank, common_positions, ensure_connector, float32,
                     module_key)


def fsp_matrix(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """G = F1^T F2 / (h * w) of two features of one network: (B, m, ...) and (B, n, ...) -> (B, m, n)."""
    a, b = common_positions(first, second)                                # (B, m, P), (B, n, P)
    return a @ b.transpose(1, 2) / a.shape[2]                             # (B, m, n)


def fsp_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Sum over consecutive pairs (i, i+1) of mean_{x, entries} (G_T - G_S)^2.

    ``student`` and ``teacher`` are the features of the same layers, shallow to deep, with equal
    channel counts layer by layer (after any connector)."""
    if len(student) != len(teacher) or len(student) < 2:
        raise ValueError(f"FSP needs the same number (>= 2) of student and teacher layers; got "
                         f"{len(student)} and {len(teacher)}")
    loss = student[0].new_zeros(())
    for i in range(len(student) - 1):
        g_s = fsp_matrix(student[i], student[i + 1])                      # (B, m, n)
        g_t = fsp_matrix(teacher[i], teacher[i + 1])                      # (B, m, n)
        if g_s.shape != g_t.shape:
            raise ValueError(f"FSP matrices of layer pair {i} differ: student {tuple(g_s.shape)}, "
                             f"teacher {tuple(g_t.shape)}; the channel counts must match (connectors "
                             "are built by setup())")
        loss = loss + F.mse_loss(g_s, g_t)
    return loss


DEFAULT_TAPS = ("stem", "@stages")


def _drop_missing_stem(model: nn.Module, taps: tuple[str, ...]) -> tuple[str, ...]:
    """The default taps start at the stem; a model that has none (the plain CNN) starts at stage 1."""
    if taps != DEFAULT_TAPS:
        return taps
    try:
        resolve_tap(model, "stem")
        return taps
    except TapError:
        return taps[1:]


@register_method("fsp", category="similarity", paper="A Gift from Knowledge Distillation: Fast "
                 "Optimization, Network Minimization and Transfer Learning", venue="CVPR", year=2017,
                 link="https://openaccess.thecvf.com/content_cvpr_2017/html/"
                      "Yim_A_Gift_From_CVPR_2017_paper.html",
                 notebook="12_sources_similarity")
class FSP(Method):
    """FSP matrices of consecutive taps. ``weight`` = 1: the paper's lambda_i = 1 (RepDistiller's
    and KD-Zoo's FSP stage sums the pairs' mean-squared errors unweighted)."""

    constraints = {"weight": "nonnegative"}

    def __init__(self, weight: float = 1.0, student_taps=DEFAULT_TAPS, teacher_taps=DEFAULT_TAPS):
        super().__init__(weight=weight)
        self.student_taps = as_taps(student_taps)
        self.teacher_taps = as_taps(teacher_taps)
        self.connectors = nn.ModuleDict()    # student tap -> 1x1 conv + BN, where widths differ

    def bind(self, student_model, teacher_model):
        self.student_taps = _drop_missing_stem(student_model, self.student_taps)
        if teacher_model is not None:
            self.teacher_taps = _drop_missing_stem(teacher_model, self.teacher_taps)
        super().bind(student_model, teacher_model)

    def setup(self, student, teacher):
        pairs = self.tap_pairs()
        if len(pairs) < 2:
            raise ValueError(f"FSP pairs consecutive layers and needs at least two taps on each side; "
                             f"got student {self.student_taps}, teacher {self.teacher_taps}")
        needed = set()
        for s_tap, t_tap in pairs:
            s, t = student.features[s_tap], teacher.features[t_tap]
            check_rank(s, s_tap, "student")
            check_rank(t, t_tap, "teacher")
            if channels(s) != channels(t):
                needed.add(module_key(s_tap))
                ensure_connector(self.connectors, module_key(s_tap), channels(s), channels(t))
        for stale in set(self.connectors) - needed:
            del self.connectors[stale]

    def forward(self, student, teacher, batch):
        s_feats, t_feats = [], []
        for s_tap, t_tap in self.tap_pairs():
            s = student.features[s_tap]
            if module_key(s_tap) in self.connectors:
                s = self.connectors[module_key(s_tap)](s)
            s_feats.append(s)
            t_feats.append(teacher.features[t_tap])
        with float32(s_feats[0]):
            return {"fsp": fsp_loss([f.float() for f in s_feats], [f.float() for f in t_feats])}
