"""IRG: Liu, Cao, Li, Yuan, Hu, Li & Duan, "Knowledge Distillation via Instance Relationship
Graph", CVPR 2019.

https://openaccess.thecvf.com/content_CVPR_2019/html/Liu_Knowledge_Distillation_via_Instance_Relationship_Graph_CVPR_2019_paper.html
(no arXiv version; the authors' code is in Caffe: https://github.com/yufanLIU/IRG)

For a batch of N instances and a layer l, the instance relationship graph IRG^l = (V^l, E^l) has
the instances' features f^l(x_i) as vertices and their Euclidean distances as edges,
A^l_{ij} = ||f^l(x_i) - f^l(x_j)||_2^2, normalised by the largest entry. The IRG transformation
from layer l1 to l2 is the distance each instance travels, Lambda_i = ||f^{l1}(x_i) - f^{l2}(x_i)||^2
(normalised likewise). The student mimics all three:

    L_vertex    = 1/N sum_i || f_T^L(x_i) - f_S^L(x_i) ||_2^2             (logits, layer L)
    L_edge      = sum_{(l_T, l_S)} || A_T^{l_T} - A_S^{l_S} ||_2^2
    L_transform = sum_{(l1, l2)} || Lambda_T^{l1,l2} - Lambda_S^{l1,l2} ||_2^2

    L_MTK = lambda_1 L_vertex + lambda_2 L_edge + lambda_3 L_transform

Implementation, following KD-Zoo's port of the authors' code: squared distances divided by their
maximum; each norm is a mean over entries (MSE); the edge and transform terms average over their
layer pairs; lambda_1 = 0.1, lambda_2 = 5, lambda_3 = 5 (KD-Zoo's defaults; the paper's own
values could not be checked here). Layers: every stage and the embedding (KD-Zoo uses the last two
stages and the embedding), paired from the deepest; transformations between consecutive stages
(maps or token sequences; the embedding vector takes part in the edges only, as in KD-Zoo).
Edges are N x N, so teacher and student widths may differ. For a transformation the two features
of one network must have one shape: the larger is average-pooled to the smaller's positions and
channel count (KD-Zoo averages channel pairs when a stage doubles its width; pooling channels
generalises that to any ratio).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...probes.similarity import distance_matrix
from ..base import Method, register_method
from .common import as_taps, common_positions, float32


def edge_matrix(features: torch.Tensor) -> torch.Tensor:
    """A_ij = ||f_i - f_j||^2 / max: (N, ...) -> (N, N), largest entry 1."""
    squared = distance_matrix(features, normalise=False).pow(2)            # (N, N), zero diagonal
    return squared / squared.max().clamp(min=1e-12)


def transformation(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Lambda_i = ||f^{l1}(x_i) - f^{l2}(x_i)||^2 / max over i, for two layers of one network: (N,)."""
    a, b = common_positions(first.float(), second.float())                # (N, C1, P), (N, C2, P)
    width = min(a.shape[1], b.shape[1])
    # average-pool the wider one over its channels: (N, C, P) -> (N, P, C) -> pool -> back
    a, b = (F.adaptive_avg_pool1d(x.transpose(1, 2), width).transpose(1, 2)
            if x.shape[1] != width else x for x in (a, b))
    squared = (a - b).pow(2).sum(dim=(1, 2))                              # (N,)
    return squared / squared.max().clamp(min=1e-12)


def irg_losses(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               student: list[torch.Tensor], teacher: list[torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L_vertex, L_edge, L_transform), unweighted, for paired layers (shallow to deep).

    L_transform is 0 when no two consecutive layers are maps (nothing to match)."""
    if len(student) != len(teacher) or not student:
        raise ValueError(f"IRG needs the same number (>= 1) of student and teacher layers; got "
                         f"{len(student)} and {len(teacher)}")
    vertex = F.mse_loss(student_logits.float(), teacher_logits.float())
    edge = sum(F.mse_loss(edge_matrix(s), edge_matrix(t))
               for s, t in zip(student, teacher)) / len(student)
    # transformations between consecutive maps (or token sequences); vectors such as the pooled
    # embedding take part in edges only, as in KD-Zoo (a pooled map's "travel" to its own average
    # says little, and is exactly 0 for models whose embedding is that average)
    pairs = [i for i in range(len(student) - 1)
             if min(student[i].dim(), student[i + 1].dim(), teacher[i].dim(), teacher[i + 1].dim()) > 2]
    transform = vertex.new_zeros(())
    for i in pairs:
        transform = transform + F.mse_loss(transformation(student[i], student[i + 1]),
                                           transformation(teacher[i], teacher[i + 1])) / len(pairs)
    return vertex, edge, transform


@register_method("irg", category="similarity", paper="Knowledge Distillation via Instance "
                 "Relationship Graph", venue="CVPR", year=2019,
                 link="https://openaccess.thecvf.com/content_CVPR_2019/html/"
                      "Liu_Knowledge_Distillation_via_Instance_Relationship_Graph_CVPR_2019_paper.html",
                 notebook="12_sources_similarity")
class IRG(Method):
    """Vertices (logits), edges (distance matrices of each layer) and transformations (between
    consecutive layers). ``vertex_weight``, ``edge_weight``, ``transform_weight`` are lambda_1..3."""

    constraints = {"weight": "nonnegative", "vertex_weight": "nonnegative",
                   "edge_weight": "nonnegative", "transform_weight": "nonnegative"}

    def __init__(self, vertex_weight: float = 0.1, edge_weight: float = 5.0,
                 transform_weight: float = 5.0, weight: float = 1.0,
                 student_taps=("@stages", "@embedding"), teacher_taps=("@stages", "@embedding")):
        super().__init__(weight=weight)
        self.vertex_weight = vertex_weight
        self.edge_weight = edge_weight
        self.transform_weight = transform_weight
        self.student_taps = as_taps(student_taps)
        self.teacher_taps = as_taps(teacher_taps)

    def forward(self, student, teacher, batch):
        pairs = self.tap_pairs()
        with float32(student.logits):
            vertex, edge, transform = irg_losses(
                student.logits, teacher.logits,
                [student.features[s] for s, _ in pairs], [teacher.features[t] for _, t in pairs])
        return {"vertex": self.vertex_weight * vertex, "edge": self.edge_weight * edge,
                "transform": self.transform_weight * transform}
