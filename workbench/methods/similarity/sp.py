"""SP: Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019.

arXiv 1907.09682, https://arxiv.org/abs/1907.09682

Inputs that the teacher finds similar should look similar to the student. For a batch of b inputs
and the activation map A^(l) (b x c x h x w) of layer l, Q = A^(l) reshaped to (b, c*h*w) and

    G^(l) = Q Q^T,   G~^(l)_[i,:] = G^(l)_[i,:] / ||G^(l)_[i,:]||_2        (b x b, rows normalised)

    L_SP = 1/b^2 * sum_{(l, l') in I} || G~_T^(l) - G~_S^(l') ||_F^2

and the student minimises L_CE + gamma * L_SP with gamma = 3000 (the paper's CIFAR-10 setting, also
RepDistiller's). I is the set of layer pairs: by default the last stage of each network (the
paper's choice for CIFAR, "the output of the last group of residual blocks"). G~ is b x b whatever
the layer's shape, so any student/teacher pair works without a connector, ViT tokens included.
"""
from __future__ import annotations

import torch

from ...probes.similarity import gram_similarity_matrix
from ..base import Method, register_method
from .common import as_taps, float32


def sp_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """||G~_T - G~_S||_F^2 / b^2 for one layer pair; features (b, ...) of any shape."""
    batch = student.shape[0]
    diff = gram_similarity_matrix(teacher) - gram_similarity_matrix(student)   # (b, b)
    return diff.pow(2).sum() / batch ** 2


@register_method("sp", category="similarity", paper="Similarity-Preserving Knowledge Distillation",
                 venue="ICCV", year=2019, link="https://arxiv.org/abs/1907.09682",
                 notebook="12_sources_similarity")
class SP(Method):
    """Batch similarity matrices of the last stages; ``weight`` is the paper's gamma = 3000."""

    constraints = {"weight": "nonnegative"}

    def __init__(self, weight: float = 3000.0, student_taps=("@last",), teacher_taps=("@last",)):
        super().__init__(weight=weight)
        self.student_taps = as_taps(student_taps)
        self.teacher_taps = as_taps(teacher_taps)

    def forward(self, student, teacher, batch):
        pairs = self.tap_pairs()
        with float32(student.logits):
            loss = sum(sp_loss(student.features[s], teacher.features[t]) for s, t in pairs)
        return {"sp": loss}
