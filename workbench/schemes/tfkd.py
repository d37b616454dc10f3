"""Tf-KD: Yuan, Tay, Li, Wang & Feng, "Revisiting Knowledge Distillation via Label Smoothing
Regularization", CVPR 2020.

arXiv 1909.11723, https://arxiv.org/abs/1909.11723

KD works like a learned label smoothing, so a teacher can be designed by hand. The *virtual
teacher* (Tf-KD_reg, eq. 9) is right with probability a and uniform over the K - 1 other classes:

    p^d(k) = a                   if k = c (the true class)
           = (1 - a) / (K - 1)   otherwise

and the student learns from it by KD at temperature T (eq. 10):

    L = (1 - alpha) * H(q, p) + alpha * T^2 * KL(p^d_T || p_T)

Here the virtual teacher's logits are log p^d, so softmax(logits / T) is p^d softened at T as any
teacher's distribution is, and the KD term is the run's methods (default KD at T = 4 with weight
0.5 beside the task weight 1; a = 0.9). At T = 1, with task weight w_ce and KD weight w_kd, the
loss is (w_ce + w_kd) times the cross-entropy with uniform label smoothing (the paper's point) of
strength eps = w_kd / (w_ce + w_kd) * (1 - a) * K / (K - 1), plus a constant
(:func:`matching_label_smoothing`); at T > 1 the softened target is flatter than that. The
authors' code softens the probabilities themselves, softmax(p^d / T), and multiplies the term by
a constant (T = 20, a = 0.99, multiplier 100 for ResNet-18 on CIFAR-100); the log form keeps T's
meaning the same as for a real teacher.

The comparison with label smoothing of the same strength: the offline scheme without a teacher,
``wb.distill(student, None, data, methods={}, scheme_args={"label_smoothing": eps},
task_weight=w_ce + w_kd)``, which takes the same steps as Tf-KD at T = 1 (a test checks it).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..registry import SCHEMES
from ..taps import Outputs
from .base import Scheme


def virtual_teacher_logits(labels: torch.Tensor, num_classes: int, correct_prob: float) -> torch.Tensor:
    """log p^d: (B,) labels -> (B, K) logits whose softmax is a on the label, (1-a)/(K-1) elsewhere."""
    other = math.log((1 - correct_prob) / (num_classes - 1))
    logits = torch.full((labels.shape[0], num_classes), other, device=labels.device)
    return logits.scatter_(1, labels.view(-1, 1), math.log(correct_prob))


def matching_label_smoothing(correct_prob: float, num_classes: int, *, kd_weight: float,
                             task_weight: float) -> float:
    """eps of the uniform label smoothing, (1 - eps) * onehot + eps / K, whose target equals
    Tf-KD's at T = 1: the mix (task_weight * onehot + kd_weight * p^d) / (task_weight + kd_weight).
    With no task term that is p^d itself: eps = (1 - a) * K / (K - 1)."""
    share = kd_weight / (task_weight + kd_weight)
    return share * (1 - correct_prob) * num_classes / (num_classes - 1)


@SCHEMES.register("tfkd", category="self", paper="Revisiting Knowledge Distillation via Label "
                  "Smoothing Regularization", venue="CVPR", year=2020,
                  link="https://arxiv.org/abs/1909.11723", notebook="20_schemes")
class TfKD(Scheme):
    """Teacher-free KD with the virtual teacher. ``correct_prob``: a, the virtual teacher's
    probability of the true class (0 < a < 1)."""

    name = "tfkd"
    needs_teacher = False
    uses_teacher = False
    default_methods = {"kd": {"temperature": 4.0, "weight": 0.5}}

    def __init__(self, correct_prob: float = 0.9):
        super().__init__()
        if not 0.0 < correct_prob < 1.0:
            raise ValueError(f"tfkd: correct_prob={correct_prob!r} must be in (0, 1)")
        self.correct_prob = float(correct_prob)

    def attach(self, run) -> None:
        super().attach(run)
        for name, method in self.methods.items():
            if tuple(method.teacher_taps):
                raise ValueError(f"tfkd: the virtual teacher has logits only; method {name!r} needs "
                                 "teacher taps: use logit methods (kd, dkd, ...)")

    def step(self, batch):
        out = self.student_taps(batch.x)
        teacher = Outputs(virtual_teacher_logits(batch.y, out.logits.shape[1], self.correct_prob))
        ce = F.cross_entropy(out.logits, batch.y)
        distill, terms = self.method_terms(out, teacher, batch)
        return self.run.active_task_weight * ce + distill, {"ce": ce, **terms}, out.logits

    def describe(self) -> dict[str, Any]:
        return {"correct_prob": self.correct_prob}
