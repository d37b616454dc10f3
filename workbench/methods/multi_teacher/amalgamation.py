"""Knowledge amalgamation: one student over every class from teachers that each know a subset.

Shen, Wang, Song, Sun & Song, "Amalgamating Knowledge towards Comprehensive Classification",
AAAI 2019. arXiv 1811.02796, https://arxiv.org/abs/1811.02796

Teacher k was trained on its own classes C_k only (the subsets are disjoint and together cover all
C classes); the student has C outputs and, in the paper's setting, no labels at all. This is the
simple logit-level amalgamation (the paper's layer-wise feature amalgamation is not implemented):
the teachers' score vectors are concatenated into one vector over all classes,
v = [v_1 | v_2 | ...] placed at the classes C_k, and the student learns from it with two terms at
temperature T, z being the student's logits and z_{C_k} its scores on teacher k's classes:

    L_subset = sum_k T^2 KL(softmax(v_k / T) || softmax(z_{C_k} / T))   each teacher's knowledge of
                                                                         its own classes
    L_joint  = T^2 KL(softmax(v / T) || softmax(z / T))                   which teacher's task the
                                                                         sample belongs to
L_subset is blind to a shift of one subset's scores against another's, so it does not itself ask
the student to decide between the teachers' tasks (on digits it still does, through the shared
features: a peaked target raises its subset's top score, a flat one keeps it low); L_joint, KD to
the concatenated scores, asks for that decision explicitly. It compares the teachers' raw logit
scales, which works when a teacher is less sure outside its own classes.
Run it with ``task_weight=0`` to reproduce the paper's label-free setting. T = 4 and weight 1 are
this workbench's choices (the paper's logit layer is trained by regression on the concatenated
scores); ``joint_weight`` weighs L_joint against L_subset.

With an ordinary single teacher (one subset: every class) both terms are KD.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..base import register_method
from .ensemble import MultiTeacherMethod, concatenate


def _kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    log_p = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_q = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * temperature ** 2


def amalgamation_losses(student_logits: torch.Tensor, teacher_logits: Sequence[torch.Tensor],
                        classes: Sequence[torch.Tensor],
                        temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_subset, L_joint). student (B, C); teacher k (B, |C_k|) over the classes ``classes[k]``
    (index tensors on the logits' device)."""
    subset = sum(_kd(student_logits[:, c], v, temperature) for v, c in zip(teacher_logits, classes))
    joint = _kd(student_logits, concatenate(teacher_logits, torch.cat(list(classes))), temperature)
    return subset, joint


@register_method("amalgamation", category="multi_teacher", paper="Amalgamating Knowledge towards "
                 "Comprehensive Classification", venue="AAAI", year=2019,
                 link="https://arxiv.org/abs/1811.02796", notebook="32_multi_teacher")
class Amalgamation(MultiTeacherMethod):
    """Logit amalgamation of teachers over disjoint class subsets; terms ``subset`` and ``joint``.
    The teacher is a ``MultiTeacher(teachers, classes=[...])``."""

    subset_teachers = True
    constraints = {"weight": "nonnegative", "temperature": "positive", "joint_weight": "nonnegative"}

    def __init__(self, temperature: float = 4.0, joint_weight: float = 1.0, weight: float = 1.0):
        super().__init__(weight=weight)
        self.temperature = temperature
        self.joint_weight = joint_weight
        self._index: dict[torch.device, list[torch.Tensor]] = {}

    def bind(self, student_model, teacher_model):
        super().bind(student_model, teacher_model)
        if self.classes is None and len(self.teacher_taps) > 1:
            raise ValueError("amalgamation: the teachers all predict every class; give each one's class "
                             "subset, MultiTeacher(teachers, classes=[[...], [...]])")
        self._index.clear()

    def forward(self, student, teacher, batch):
        logits = student.logits
        classes = self.classes or [list(range(logits.shape[1]))]
        if sum(map(len, classes)) != logits.shape[1]:
            raise ValueError(f"amalgamation: the teachers cover {sum(map(len, classes))} classes but "
                             f"the student has {logits.shape[1]} outputs")
        if logits.device not in self._index:  # index tensors made once per device, not every step
            self._index[logits.device] = [torch.tensor(c, device=logits.device) for c in classes]
        subset, joint = amalgamation_losses(logits, self.teacher_logits(teacher), self._index[logits.device],
                                            self.temperature)
        return {"subset": subset, "joint": self.joint_weight * joint}
