"""GLNN: Zhang, Liu, Sun & Shah, "Graph-less Neural Networks: Teaching Old MLPs New Tricks via
Distillation", ICLR 2022.

arXiv 2110.08727, https://arxiv.org/abs/2110.08727 (code: snap-research/graphless-neural-networks)

A GNN teacher's soft labels z_v teach an MLP student, which then classifies nodes from their
features alone, with no graph to fetch at inference. With the student's predictions y^_v, the
labelled nodes V^L and all nodes V (eq. 1):

    L = lambda * sum_{v in V^L} L_label(y^_v, y_v) + (1 - lambda) * sum_{v in V} L_teacher(y^_v, z_v)

L_label is the cross-entropy, L_teacher the KL divergence KL(z_v || y^_v). The reference code uses
no temperature (T = 1: ``KLDivLoss(reduction="batchmean", log_target=True)`` on log-softmaxes)
and ``--lamb 0`` by default: the student learns the soft labels alone. This is KD's loss at T = 1
(:func:`workbench.methods.logit.kd.kd_loss`, which it calls); what makes it GLNN is where it runs:
on every node, the unlabelled ones included (:func:`workbench.data.sbm.distillation_view`).

In the workbench the trainer's ``task_weight`` is lambda (the cross-entropy over the batch's
labelled nodes) and this method's ``weight`` is 1 - lambda; the paper's default is
``task_weight=0.0`` with ``weight=1.0``.
"""
from __future__ import annotations

from ..base import Method, register_method
from ..logit.kd import kd_loss


def glnn_loss(student_logits, teacher_logits, temperature: float = 1.0):
    """KL(softmax(z / T) || softmax(y^ / T)) * T^2 averaged over the nodes: (B, K) logits."""
    return kd_loss(student_logits, teacher_logits, temperature)


@register_method("glnn", category="graph", paper="Graph-less Neural Networks: Teaching Old MLPs "
                 "New Tricks via Distillation", venue="ICLR", year=2022,
                 link="https://arxiv.org/abs/2110.08727", notebook="34_graph")
class GLNN(Method):
    """Soft labels of a GNN teacher for an MLP student; ``weight`` = 1 - lambda (the trainer's
    ``task_weight`` = lambda; the paper's default lambda = 0)."""

    constraints = {"weight": "nonnegative", "temperature": "positive"}

    def __init__(self, temperature: float = 1.0, weight: float = 1.0):
        super().__init__(weight=weight)
        self.temperature = temperature

    def forward(self, student, teacher, batch):
        return {"kl": glnn_loss(student.logits, teacher.logits.detach(), self.temperature)}
