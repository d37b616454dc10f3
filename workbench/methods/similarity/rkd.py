"""RKD: Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019.

arXiv 1904.05068, https://arxiv.org/abs/1904.05068

The student matches relations among the teacher's embeddings t_i (student: s_i) within a batch,
with the Huber loss l_delta (delta = 1):

Distance-wise, with mu the mean distance over the pairs of the batch:

    psi_D(t_i, t_j) = (1 / mu) * ||t_i - t_j||_2
    L_RKD-D = sum_{(x_i, x_j)} l_delta(psi_D(t_i, t_j), psi_D(s_i, s_j))

Angle-wise, over triplets, with e^{ij} = (t_i - t_j) / ||t_i - t_j||_2:

    psi_A(t_i, t_j, t_k) = cos angle(t_i t_j t_k) = <e^{ij}, e^{kj}>
    L_RKD-A = sum_{(x_i, x_j, x_k)} l_delta(psi_A(t_i, t_j, t_k), psi_A(s_i, s_j, s_k))

    L = lambda_D * L_RKD-D + lambda_A * L_RKD-A

with lambda_D = 25 and lambda_A = 50, the paper's image-classification setting (also RepDistiller's).

Both relations are scale- and dimension-free, so teacher and student embeddings of different sizes
need no connector. As in the authors' code (and RepDistiller), the sums are means over all B^2
pairs and B^3 triplets; the degenerate ones (i = j) are 0 on both sides and add no loss. The angle
term builds a (B, B, D) tensor of differences: memory grows as B^2 * D.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...probes.similarity import distance_matrix
from ..base import Method, register_method
from .common import as_taps, float32


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """mean_{i,j} Huber(psi_D(t_i, t_j), psi_D(s_i, s_j)); embeddings (B, ...) are flattened."""
    return F.smooth_l1_loss(distance_matrix(student), distance_matrix(teacher), beta=1.0)


def angle_matrix(embeddings: torch.Tensor) -> torch.Tensor:
    """psi_A for every triplet: (B, ...) -> (B, B, B), entry [j, i, k] = <e^{ij}, e^{kj}>."""
    e = embeddings.flatten(1).float()                                     # (B, D)
    diff = e[None, :, :] - e[:, None, :]                                  # [j, i] = e_i - e_j, (B, B, D)
    unit = F.normalize(diff, p=2, dim=2)                                  # e^{ij}; 0 where i = j
    return unit @ unit.transpose(1, 2)                                    # (B, B, B)


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """mean_{i,j,k} Huber(psi_A(t_i, t_j, t_k), psi_A(s_i, s_j, s_k))."""
    return F.smooth_l1_loss(angle_matrix(student), angle_matrix(teacher), beta=1.0)


@register_method("rkd", category="similarity", paper="Relational Knowledge Distillation",
                 venue="CVPR", year=2019, link="https://arxiv.org/abs/1904.05068",
                 notebook="12_sources_similarity")
class RKD(Method):
    """Distance- and angle-wise relations of the embeddings. ``distance_weight`` = 25 and
    ``angle_weight`` = 50 are the paper's lambda_D and lambda_A; ``weight`` = 1 as in RepDistiller."""

    constraints = {"weight": "nonnegative", "distance_weight": "nonnegative",
                   "angle_weight": "nonnegative"}

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0,
                 weight: float = 1.0, student_taps=("@embedding",), teacher_taps=("@embedding",)):
        super().__init__(weight=weight)
        self.distance_weight = distance_weight
        self.angle_weight = angle_weight
        self.student_taps = as_taps(student_taps)
        self.teacher_taps = as_taps(teacher_taps)

    def forward(self, student, teacher, batch):
        distance = angle = None
        for s_tap, t_tap in self.tap_pairs():
            s, t = student.features[s_tap], teacher.features[t_tap]
            with float32(s):
                d, a = rkd_distance_loss(s, t), rkd_angle_loss(s, t)
            distance = d if distance is None else distance + d
            angle = a if angle is None else angle + a
        return {"distance": self.distance_weight * distance, "angle": self.angle_weight * angle}
