"""`MultiTeacher`: several frozen teachers presented to a run as its one teacher.

A run has one teacher (``wb.distill(student, teacher, ...)``). Multi-teacher distillation needs
each teacher's own outputs, so the teachers are gathered in one ``nn.Module`` whose members are
``members.0``, ``members.1``, ... Each member's output (its logits) is then a tap by module path,
and the multi-teacher methods of this folder ask for those taps: the per-teacher logits arrive in
``teacher.features["members.k"]`` through the ordinary tap machinery. Nothing in the engine
changes: the offline scheme freezes every member (eval mode, no gradients) because it freezes the
one teacher module, the teacher cache keeps the members' logits like any tap, and
``run.evaluate`` reports the ensemble's accuracy and the student's agreement with it.

    teacher = MultiTeacher([t1, t2, t3])                    # teachers over the same classes
    wb.distill(student, teacher, data, methods={"aekd": {}})
    teacher = MultiTeacher([t_low, t_high], classes=[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])
    wb.distill(student, teacher, data, methods={"amalgamation": {}}, task_weight=0)

The ensemble's own forward (what ``run.evaluate`` scores) is, for teachers over the same classes,
the log of the averaged probabilities, log (1/K sum_k softmax(z_k)); for teachers over disjoint
class subsets (``classes``), the concatenation of their logits placed at their classes.

A method of this folder also accepts an ordinary (single) teacher, as an ensemble of one: every
multi-teacher loss then reduces to KD with that teacher.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
from torch import nn

from ...taps import Outputs
from ..base import Method


class MultiTeacher(nn.Module):
    """Frozen teachers behind one module (see the module docstring).

    ``classes``: None (every teacher predicts every class) or one list of class indices per
    teacher, disjoint and together covering 0..C-1, where teacher k's output j scores class
    ``classes[k][j]`` (knowledge amalgamation).
    """

    def __init__(self, teachers: Iterable[nn.Module], classes: Sequence[Sequence[int]] | None = None):
        super().__init__()
        self.members = nn.ModuleList(teachers)
        if len(self.members) == 0:
            raise ValueError("MultiTeacher needs at least one teacher")
        if len({id(m) for m in self.members}) != len(self.members):
            raise ValueError("MultiTeacher: a teacher appears twice; give distinct modules")
        if classes is not None:
            classes = [[int(c) for c in subset] for subset in classes]
            if len(classes) != len(self.members):
                raise ValueError(f"MultiTeacher: {len(self.members)} teachers but {len(classes)} class "
                                 "subsets; give one list of classes per teacher")
            flat = sorted(c for subset in classes for c in subset)
            if flat != list(range(len(flat))):
                raise ValueError(f"MultiTeacher: the class subsets {classes} must be disjoint and cover "
                                 f"0..C-1 together")
            for k, (member, subset) in enumerate(zip(self.members, classes)):
                outputs = getattr(member, "num_classes", len(subset))
                if outputs != len(subset):
                    raise ValueError(f"MultiTeacher: teacher {k} has {outputs} outputs but its class "
                                     f"subset {subset} has {len(subset)} classes")
        self.classes = classes
        if classes is not None:  # where each teacher's outputs go; moves with the module, not saved
            self.register_buffer("class_order", torch.tensor([c for subset in classes for c in subset]),
                                 persistent=False)
        self.num_classes = len(flat) if classes is not None else getattr(self.members[0], "num_classes", None)
        self.in_channels = getattr(self.members[0], "in_channels", None)
        self.spec = {"name": "multi_teacher", "classes": classes,
                     "members": [dict(getattr(m, "spec", None) or {"name": type(m).__name__})
                                 for m in self.members]}

    def member_taps(self) -> list[str]:
        """The tap (module path) of each teacher's logits."""
        return [f"members.{k}" for k in range(len(self.members))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = [_first(member(x)) for member in self.members]               # K x (B, K_k)
        if self.classes is None:
            # log of the averaged probabilities: a valid logit vector of the ensemble
            log_probs = torch.stack([z.float().log_softmax(1) for z in logits])  # (K, B, C)
            return log_probs.logsumexp(0) - math.log(len(logits))
        return concatenate(logits, self.class_order)


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def concatenate(logits: Sequence[torch.Tensor], order: torch.Tensor) -> torch.Tensor:
    """Teachers' logits over disjoint class subsets placed at their classes: (B, C).

    ``order`` (C,) lists the classes of teacher 0, then of teacher 1, ... (on the logits' device)."""
    joined = torch.cat(list(logits), dim=1)                                  # (B, C), teacher order
    return torch.empty_like(joined).index_copy_(1, order, joined)


class MultiTeacherMethod(Method):
    """Base of the multi-teacher losses: binds to a :class:`MultiTeacher`'s member taps (or to a
    single teacher, an ensemble of one) and hands ``forward`` the list of teachers' logits."""

    #: True for methods whose teachers cover class subsets (amalgamation); False: full-class teachers
    subset_teachers = False
    #: the teachers' class subsets once bound (None: every teacher predicts every class)
    classes: list[list[int]] | None = None

    def bind(self, student_model, teacher_model):
        is_ensemble = isinstance(teacher_model, MultiTeacher)
        classes = teacher_model.classes if is_ensemble else None
        if classes is not None and not self.subset_teachers:
            raise ValueError(f"{self.name}: the teachers cover class subsets {classes}; this method needs "
                             "teachers over every class (for disjoint subsets use 'amalgamation')")
        object.__setattr__(self, "student_taps", ())
        object.__setattr__(self, "teacher_taps", tuple(teacher_model.member_taps()) if is_ensemble else ())
        object.__setattr__(self, "classes", classes)

    def teacher_logits(self, teacher: Outputs) -> list[torch.Tensor]:
        """Each teacher's logits, detached: K x (B, classes of that teacher)."""
        if not self.teacher_taps:
            return [teacher.logits.detach()]
        return [teacher.features[tap].detach() for tap in self.teacher_taps]
