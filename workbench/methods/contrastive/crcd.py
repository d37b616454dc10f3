"""CRCD: Zhu, Tang, Chen, Yu, Liu, Yang, Rong & Wang, "Complementary Relation Contrastive
Distillation", CVPR 2021.

arXiv 2103.16367, https://arxiv.org/abs/2103.16367 (the authors' partial re-implementation:
https://github.com/Lechatelia/CRCD)

CRD contrasts samples; CRCD contrasts RELATIONS between samples. Relations are estimated against
anchors: with the teacher's projected embeddings as anchors a_j, the anchor-student relation of
sample i is r^S_ij = (s_i - a_j) / ||s_i - a_j|| and the anchor-teacher relation r^T_ij = (t_i -
a_j) / ||t_i - a_j||. For a fixed anchor j, the student's relation r^S_ij must be recognised
among the teacher's relations r^T_kj of every sample k: the positive is k = i. The critic is the
cosine of the two relations at temperature tau, and the loss (a lower bound on the mutual
information of the two relation distributions) is, per anchor j and sample i,

    L_ij = - log exp(r^S_ij . r^T_ij / tau) / sum_k exp(r^S_ij . r^T_kj / tau)

"Complementary": relations are built from two elements of each sample, its feature and the gradient
of the task loss with respect to that feature (how the network would move it). For an embedding
e feeding the linear classifier W, that gradient is dCE/de = (softmax(W e + b) - onehot(y)) W, in
closed form (the authors call autograd; this is the same number, and it keeps the student's graph,
so the gradient term trains the student through its logits and classifier). Both elements get their
own linear projections to 128-d and L2 normalisation, as in the authors' ``Embed``.

As in CRD (and the authors' code), the loss is symmetric: besides the student relations against
teacher anchors, the teacher's relations t_i - s_j against student anchors s_j are contrasted
among the student's relations s_k - s_j (it trains the teacher-side projections and the student).

Negatives: this implementation contrasts within the batch (in-batch negatives, no memory bank):
anchors j and candidates k range over the batch, the anchor j = i (whose positive relation is
zero) and the candidate k = j (a zero relation) are left out; a batch needs 3 or more samples.
The authors' CRD-style code draws the candidates k from a memory bank of all training samples
instead. tau = 0.07 and weight 0.8 follow CRD's settings, on which the authors' code is built;
``gradient_weight`` (1: the two elements weigh alike) scales the gradient-relation term. Terms:
``feature`` and ``gradient``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base import Method, register_method
from ..feature._maps import tap_tuple
from .crd import Embed


def relation_contrast(queries: torch.Tensor, anchors: torch.Tensor, temperature: float) -> torch.Tensor:
    """In-batch relation contrastive loss. queries (B, D): one model's samples q_i; anchors (B, D):
    the other model's samples a_j, which also give the candidate relations.

    Query relation r_ij = normalize(q_i - a_j); candidate relations c_kj = normalize(a_k - a_j);
    for every anchor j != i: -log softmax_k(r_ij . c_kj / tau)[k = i] over k != j; mean over (i, j).
    """
    batch = queries.shape[0]
    if batch < 3:
        raise ValueError(f"crcd: in-batch relation contrast needs a batch of 3 or more, got {batch}")
    queries, anchors = queries.float(), anchors.float()   # logits / 0.07 need float32's precision
    query = F.normalize(queries[:, None, :] - anchors[None, :, :], dim=2)            # (B_i, B_j, D)
    candidate = F.normalize(anchors[:, None, :] - anchors[None, :, :], dim=2)        # (B_k, B_j, D)
    with torch.autocast(queries.device.type, enabled=False):   # float32 under bf16 autocast
        logits = torch.einsum("ijd,kjd->ijk", query, candidate) / temperature       # (B_i, B_j, B_k)
    eye = torch.eye(batch, dtype=torch.bool, device=queries.device)
    logits = logits.masked_fill(eye[None, :, :], float("-inf"))    # k = j: the anchor's own zero relation
    log_prob = logits.log_softmax(dim=2)
    positive = log_prob.diagonal(dim1=0, dim2=2)                   # (B_j, B_i): k = i
    return -positive[~eye].mean()                                   # every (i, j) with j != i


def task_gradient(logits: torch.Tensor, target: torch.Tensor,
                  classifier_weight: torch.Tensor) -> torch.Tensor:
    """dCE(W e + b, y)/de per sample = (softmax(z) - onehot(y)) W: (B, C) x (C, D) -> (B, D)."""
    residual = logits.float().softmax(1) - F.one_hot(target, logits.shape[1]).float()
    return residual @ classifier_weight.float()


def symmetric_relation_contrast(student: torch.Tensor, teacher: torch.Tensor,
                                temperature: float) -> torch.Tensor:
    """Student relations to teacher anchors plus teacher relations to student anchors; the
    projected, normalised elements (B, F) of the two models."""
    return relation_contrast(student, teacher, temperature) + relation_contrast(teacher, student, temperature)


@register_method("crcd", category="contrastive", paper="Complementary Relation Contrastive Distillation",
                 venue="CVPR", year=2021, link="https://arxiv.org/abs/2103.16367",
                 notebook="36_contrastive")
class CRCD(Method):
    """Complementary relation contrastive distillation with in-batch anchors and negatives.

    The taps must be the embeddings that feed each model's ``classifier`` (the gradient element
    needs it); with ``gradient_weight=0`` any tap works and only the feature relations count.
    """

    min_batch_size = 3  # its in-batch relations need an anchor, a positive and a negative
    constraints = {"weight": "nonnegative", "temperature": "positive", "gradient_weight": "nonnegative",
                   "feat_dim": "positive"}
    student_taps = ("@embedding",)
    teacher_taps = ("@embedding",)

    def __init__(self, feat_dim: int = 128, temperature: float = 0.07, gradient_weight: float = 1.0,
                 weight: float = 0.8, student_taps=student_taps, teacher_taps=teacher_taps):
        super().__init__(weight=weight)
        self.feat_dim = feat_dim
        if self.feat_dim != int(self.feat_dim):
            raise ValueError(f"crcd: feat_dim={feat_dim!r} must be a whole number")
        self.temperature = temperature
        self.gradient_weight = gradient_weight
        self.student_taps = tap_tuple(student_taps)
        self.teacher_taps = tap_tuple(teacher_taps)

    def bind(self, student_model, teacher_model):
        super().bind(student_model, teacher_model)
        if len(self.student_taps) != 1 or len(self.teacher_taps) != 1:
            raise ValueError(f"crcd: give one student and one teacher tap, got {self.student_taps} and "
                             f"{self.teacher_taps}")
        # the classifiers' weights give the gradient element; held by reference, never trained here
        for role, model in (("student", student_model), ("teacher", teacher_model)):
            head = getattr(model, "classifier", None)
            object.__setattr__(self, f"_{role}_classifier", head if isinstance(head, nn.Linear) else None)

    def setup(self, student, teacher):
        s_tap, t_tap = self.student_taps[0], self.teacher_taps[0]
        f_s, f_t = student.features[s_tap], teacher.features[t_tap]
        dim = int(self.feat_dim)
        for role, tap, feature in (("student", s_tap, f_s), ("teacher", t_tap, f_t)):
            head = getattr(self, f"_{role}_classifier", None)
            if self.gradient_weight and (head is None or feature[0].numel() != head.in_features):
                raise ValueError(
                    f"crcd: the gradient element needs the {role}'s tap {tap!r} to feed its linear "
                    f"'classifier' (tap shape {tuple(feature.shape)}, classifier "
                    f"{None if head is None else (head.in_features, head.out_features)}); "
                    "use the '@embedding' tap or set gradient_weight=0")
        self.embed_student = Embed(f_s[0].numel(), dim).to(f_s.device)
        self.embed_teacher = Embed(f_t[0].numel(), dim).to(f_t.device)
        self.embed_student_gradient = Embed(f_s[0].numel(), dim).to(f_s.device)
        self.embed_teacher_gradient = Embed(f_t[0].numel(), dim).to(f_t.device)

    def forward(self, student, teacher, batch):
        f_s = student.features[self.student_taps[0]].flatten(1)                    # (B, D_s)
        f_t = teacher.features[self.teacher_taps[0]].detach().flatten(1)           # (B, D_t)
        feature = symmetric_relation_contrast(self.embed_student(f_s), self.embed_teacher(f_t),
                                              self.temperature)
        if not self.gradient_weight:  # the term stays, so every step logs the same terms
            return {"feature": feature, "gradient": feature.new_zeros(())}
        if self._student_classifier is None or self._teacher_classifier is None:
            raise ValueError("crcd: gradient_weight > 0 needs both models to have a linear 'classifier'")
        g_s = task_gradient(student.logits, batch.y, self._student_classifier.weight)          # (B, D_s)
        g_t = task_gradient(teacher.logits.detach(), batch.y, self._teacher_classifier.weight.detach())
        gradient = symmetric_relation_contrast(self.embed_student_gradient(g_s),
                                               self.embed_teacher_gradient(g_t), self.temperature)
        return {"feature": feature, "gradient": self.gradient_weight * gradient}
