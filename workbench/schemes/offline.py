"""Offline distillation: a pretrained teacher, frozen by construction, teaches the student.

Loss = task_weight * CE(y, student) + sum over methods of weight * term(student, teacher).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..registry import SCHEMES
from .base import Scheme


def freeze(teacher: nn.Module) -> nn.Module:
    """Put ``teacher`` in eval mode and turn off its gradients, in place; return it.

    Eval mode fixes batch-norm statistics and dropout, so the teacher's outputs are a function of
    the input alone; no parameter requires a gradient, so no loss can update it.
    """
    teacher.eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
        parameter.grad = None  # left over from the teacher's own training
    return teacher


def is_frozen(teacher: nn.Module) -> bool:
    return not teacher.training and not any(p.requires_grad for p in teacher.parameters())


@SCHEMES.register("offline", category="offline", paper="Distilling the Knowledge in a Neural Network",
                  venue="NeurIPS Deep Learning Workshop", year=2015, notebook="20_schemes")
class Offline(Scheme):
    """The default scheme; with no teacher it is plain supervised training (a teacher's own run)."""

    name = "offline"
    needs_teacher = False  # `wb.train` uses it without one

    def attach(self, run) -> None:
        if run.teacher is not None:
            freeze(run.teacher)
        super().attach(run)

    def step(self, batch):
        student = self.student_taps(batch.x)
        teacher = self.teacher_outputs(batch)
        ce = F.cross_entropy(student.logits, batch.y)
        distill, terms = self.method_terms(student, teacher, batch)
        return self.run.active_task_weight * ce + distill, {"ce": ce, **terms}, student.logits
