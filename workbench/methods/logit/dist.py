"""DIST: Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022.

arXiv 2205.10536, https://arxiv.org/abs/2205.10536

A much stronger teacher's probabilities are hard to match exactly, and KL asks for exactly that.
DIST asks only that the student keep the teacher's *relations*: a Pearson correlation, which does
not care about shifts and scales, between the predictions. With Y^s = softmax(Z^s / tau) and
Y^t = softmax(Z^t / tau), matrices of B samples x C classes, and d_p(u, v) = 1 - pearson(u, v):

    L_inter = tau^2 / B * sum_i d_p(Y^s_{i,:}, Y^t_{i,:})   each sample's ranking of the classes
    L_intra = tau^2 / C * sum_j d_p(Y^s_{:,j}, Y^t_{:,j})   each class's spread over the batch

    L_DIST = beta * L_inter + gamma * L_intra

The paper and its code use beta = gamma = 1 and tau = 1 (ImageNet); reimplementations on CIFAR-100
commonly use beta = gamma = 2 and tau = 4.
"""
from __future__ import annotations

import torch

from ..base import Method, register_method


def pearson(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``. (N, D) -> (N,).

    ``eps`` keeps a constant row finite (its correlation is then 0), as in the authors' code.
    """
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
              beta: float = 1.0, gamma: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(beta * L_inter, gamma * L_intra)``, both scalars. Logits: (B, C)."""
    y_s = torch.softmax(student_logits / temperature, dim=1)           # (B, C)
    y_t = torch.softmax(teacher_logits / temperature, dim=1)           # (B, C)
    inter = temperature ** 2 * (1 - pearson(y_s, y_t)).mean()         # rows: samples
    intra = temperature ** 2 * (1 - pearson(y_s.T, y_t.T)).mean()     # columns: classes
    return beta * inter, gamma * intra


@register_method("dist", category="logit", paper="Knowledge Distillation from A Stronger Teacher",
                 venue="NeurIPS", year=2022, link="https://arxiv.org/abs/2205.10536",
                 notebook="10_sources_logit")
class DIST(Method):
    """DIST: terms ``inter`` (inter-class relation, per sample) and ``intra`` (intra-class
    relation, per class across the batch). The intra term needs batches of more than one sample."""

    constraints = {"weight": "nonnegative", "beta": "nonnegative", "gamma": "nonnegative",
                   "temperature": "positive"}

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0,
                 weight: float = 1.0):
        super().__init__(weight=weight)
        self.beta, self.gamma = beta, gamma
        self.temperature = temperature

    def forward(self, student, teacher, batch):
        inter, intra = dist_loss(student.logits, teacher.logits, self.temperature,
                                 self.beta, self.gamma)
        return {"inter": inter, "intra": intra}
