"""PKT: Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer",
ECCV 2018.

arXiv 1803.10837, https://arxiv.org/abs/1803.10837

The student matches the teacher's probability distribution over its neighbours in feature space.
With a cosine-similarity kernel K(a, b) = 1/2 (a^T b / (||a||_2 ||b||_2) + 1) in [0, 1], the
conditional probability of picking sample j given sample i is

    p_{j|i} = K(x_i, x_j) / sum_{k != i} K(x_i, x_k)     (teacher; q_{j|i} likewise for the student)

and the loss is the KL divergence between them:

    L = sum_i sum_{j != i} p_{j|i} log(p_{j|i} / q_{j|i})

As in the authors' code (and RepDistiller), i = j is kept in the sums and normalisations, the
double sum is a mean over the B^2 entries, and eps = 1e-7 guards the logarithm; ``weight`` =
30000 (RepDistiller's setting for this reduction). Distributions are B x B whatever the widths,
so no connector is needed.
"""
from __future__ import annotations

import torch

from ...probes.similarity import cosine_similarity_matrix
from ..base import Method, register_method
from .common import as_taps, float32

EPS = 1e-7


def conditional_probabilities(features: torch.Tensor) -> torch.Tensor:
    """p_{j|i} from the cosine kernel, rows summing to 1: (B, ...) -> (B, B)."""
    kernel = (cosine_similarity_matrix(features) + 1) / 2                 # K in [0, 1], (B, B)
    return kernel / kernel.sum(dim=1, keepdim=True)


def pkt_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """mean_{i,j} p_{j|i} log((p_{j|i} + eps) / (q_{j|i} + eps)); features (B, ...)."""
    p = conditional_probabilities(teacher)
    q = conditional_probabilities(student)
    return (p * torch.log((p + EPS) / (q + EPS))).mean()


@register_method("pkt", category="similarity", paper="Learning Deep Representations with "
                 "Probabilistic Knowledge Transfer", venue="ECCV", year=2018,
                 link="https://arxiv.org/abs/1803.10837", notebook="12_sources_similarity")
class PKT(Method):
    """Cosine-kernel neighbour distributions of the embeddings; ``weight`` = 30000 (RepDistiller)."""

    constraints = {"weight": "nonnegative"}

    def __init__(self, weight: float = 30000.0, student_taps=("@embedding",),
                 teacher_taps=("@embedding",)):
        super().__init__(weight=weight)
        self.student_taps = as_taps(student_taps)
        self.teacher_taps = as_taps(teacher_taps)

    def forward(self, student, teacher, batch):
        with float32(student.logits):
            loss = sum(pkt_loss(student.features[s], teacher.features[t])
                       for s, t in self.tap_pairs())
        return {"pkt": loss}
