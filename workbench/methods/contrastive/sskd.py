"""SSKD: Xu, Liu, Li & Loy, "Knowledge Distillation Meets Self-Supervision", ECCV 2020.

arXiv 2006.07114, https://arxiv.org/abs/2006.07114 (code: https://github.com/xuguodong03/SSKD)

Self-supervision as extra "dark knowledge": each image x_i is also shown rotated (90, 180, 270
degrees, the transformed copies x~_j), and a network must tell which original each transformed copy
came from. The cosine similarities between the transformed and the original embeddings,
A_ji = cos(phi(x~_j), phi(x_i)) (3B x B), are the teacher's soft targets for the student's:

    L_ss = tau^2 KL(softmax(A^T / tau) || softmax(A^S / tau))          (rows j, tau = 0.5)

and the transformed images are classified too, with KD from the teacher:

    L_tf = T^2 KL(softmax(t(x~) / T) || softmax(s(x~) / T))             (T = 4)

next to KD on the originals (L_kd, T = 4) and the labels (L_ce). The teacher is imperfect on both
tasks, so rows are selected by "error level": the rows the teacher gets right (its top class is the
label; its most similar original is the true one) are all kept, and of the others only the fraction
with the best rank of the truth (``transform_keep`` = 1.0 for L_tf, ``similarity_keep`` = 0.75 for
L_ss, the code's ratio_tf / ratio_ss).

    L = 0.1 L_ce + 0.9 L_kd + 2.7 L_tf + 10 L_ss        (the code's ce/kd/tf/ss weights)

Terms here: ``kd`` (0.9 L_kd), ``transform`` (2.7 L_tf), ``similarity`` (10 L_ss); the per-term
weights are hyper-parameters and ``weight`` (1) scales all three; the trainer's ``task_weight`` is
the CE weight (the paper's 0.1; its default 1 here).

The rotated copies need extra forward passes: the method keeps references to both models (taken in
``bind``; not sub-modules, so not trained or saved through it) and runs them on the 3B rotated
images, the teacher under ``no_grad``; the student's batch-norm statistics see the rotations, as in
the authors' code (which runs all 4B images in one pass). phi is a projection head on the student's
embedding (Linear-ReLU-Linear, the code's ``proj_head``, trained by L_ss) and, on the teacher side,
the teacher's embedding itself: the authors first train a teacher head on the rotation task for 60
epochs with the teacher frozen, a stage this method leaves out (a frozen teacher's raw embedding
already ranks its own rotations; train a head separately to reproduce that stage). Inputs must be
square images (B, C, H, H).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...taps import capture
from ..base import Method, register_method
from ..feature._maps import tap_tuple


def rotations(x: torch.Tensor) -> torch.Tensor:
    """The 90, 180 and 270 degree rotations of (B, C, H, H) images, rotation-major: (3B, C, H, H);
    row r is a copy of original r mod B."""
    if x.dim() != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"sskd rotates images; it needs square image batches (B, C, H, H), got "
                         f"{tuple(x.shape)}")
    return torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in (1, 2, 3)])


def keep_by_error_level(teacher_scores: torch.Tensor, truth: torch.Tensor, keep: float) -> torch.Tensor:
    """SSKD's row selection, on the device: a bool mask (R,) keeping every row whose true column
    ranks first in ``teacher_scores`` (R, C), plus the first floor(keep * wrong) of the others in
    order of the truth's rank (ties by row)."""
    truth_score = teacher_scores.gather(1, truth[:, None])                           # (R, 1)
    rank = (teacher_scores > truth_score).sum(1)                                     # (R,) 0 = right
    wrong = (rank > 0).sum()
    kept = (rank.numel() - wrong) + torch.floor(wrong * keep).long()
    order = torch.argsort(rank, stable=True)                                         # best rank first
    position = torch.empty_like(order).scatter_(0, order, torch.arange(rank.numel(), device=rank.device))
    return position < kept


def _masked_kl(log_target: torch.Tensor, log_input: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(target || input) per row, averaged over the rows in ``mask`` (0 if none)."""
    kl = F.kl_div(log_input, log_target, reduction="none", log_target=True).sum(1)   # (R,)
    return (kl * mask).sum() / mask.sum().clamp_min(1)


def cosine_matrix(transformed: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
    """cos(transformed_j, original_i): (3B, D) x (B, D) -> (3B, B)."""
    return F.normalize(transformed, dim=1) @ F.normalize(originals, dim=1).T


def sskd_losses(student_logits, teacher_logits, student_rot_logits, teacher_rot_logits,
                student_embedding, student_rot_embedding, teacher_embedding, teacher_rot_embedding,
                target, temperature=4.0, transform_temperature=4.0, similarity_temperature=0.5,
                transform_keep=1.0, similarity_keep=0.75):
    """(L_kd, L_tf, L_ss), unweighted. Originals: logits (B, C), embeddings (B, D); rotated copies
    (3B, .) in :func:`rotations`' order; target (B,) labels. Computed in float32."""
    student_logits, teacher_logits = student_logits.float(), teacher_logits.float()
    student_rot_logits, teacher_rot_logits = student_rot_logits.float(), teacher_rot_logits.float()
    student_embedding, student_rot_embedding = student_embedding.float(), student_rot_embedding.float()
    teacher_embedding, teacher_rot_embedding = teacher_embedding.float(), teacher_rot_embedding.float()
    kd = F.kl_div(F.log_softmax(student_logits / temperature, 1),
                  F.log_softmax(teacher_logits / temperature, 1), reduction="batchmean",
                  log_target=True) * temperature ** 2
    batch = target.shape[0]
    rot_target = target.repeat(3)                                                    # (3B,)
    log_q = F.log_softmax(teacher_rot_logits / transform_temperature, 1)
    keep_tf = keep_by_error_level(log_q, rot_target, transform_keep)
    tf = _masked_kl(log_q, F.log_softmax(student_rot_logits / transform_temperature, 1), keep_tf) \
        * transform_temperature ** 2
    s_sim = cosine_matrix(student_rot_embedding, student_embedding)                  # (3B, B)
    t_sim = cosine_matrix(teacher_rot_embedding, teacher_embedding)                  # (3B, B)
    origin = torch.arange(batch, device=target.device).repeat(3)                     # (3B,)
    keep_ss = keep_by_error_level(t_sim, origin, similarity_keep)
    ss = _masked_kl(F.log_softmax(t_sim / similarity_temperature, 1),
                    F.log_softmax(s_sim / similarity_temperature, 1), keep_ss) * similarity_temperature ** 2
    return kd, tf, ss


@register_method("sskd", category="contrastive", paper="Knowledge Distillation Meets Self-Supervision",
                 venue="ECCV", year=2020, link="https://arxiv.org/abs/2006.07114",
                 notebook="36_contrastive")
class SSKD(Method):
    """Self-supervision (rotation) signals as extra knowledge; terms ``kd``, ``transform`` and
    ``similarity``. ``student_taps`` / ``teacher_taps``: the embeddings phi is computed from."""

    constraints = {"weight": "nonnegative", "temperature": "positive", "transform_temperature": "positive",
                   "similarity_temperature": "positive", "kd_weight": "nonnegative",
                   "transform_weight": "nonnegative", "similarity_weight": "nonnegative",
                   "transform_keep": "unit", "similarity_keep": "unit"}
    student_taps = ("@embedding",)
    teacher_taps = ("@embedding",)

    def __init__(self, temperature: float = 4.0, transform_temperature: float = 4.0,
                 similarity_temperature: float = 0.5, kd_weight: float = 0.9, transform_weight: float = 2.7,
                 similarity_weight: float = 10.0, transform_keep: float = 1.0, similarity_keep: float = 0.75,
                 weight: float = 1.0, student_taps=student_taps, teacher_taps=teacher_taps):
        super().__init__(weight=weight)
        self.temperature = temperature
        self.transform_temperature = transform_temperature
        self.similarity_temperature = similarity_temperature
        self.kd_weight = kd_weight
        self.transform_weight = transform_weight
        self.similarity_weight = similarity_weight
        self.transform_keep, self.similarity_keep = transform_keep, similarity_keep
        self.student_taps = tap_tuple(student_taps)
        self.teacher_taps = tap_tuple(teacher_taps)

    def bind(self, student_model, teacher_model):
        super().bind(student_model, teacher_model)
        if len(self.student_taps) != 1 or len(self.teacher_taps) != 1:
            raise ValueError(f"sskd: give one student and one teacher tap, got {self.student_taps} and "
                             f"{self.teacher_taps}")
        # references for the extra forward passes on rotated images (not sub-modules: never
        # trained or checkpointed through the method)
        object.__setattr__(self, "_student_model", student_model)
        object.__setattr__(self, "_teacher_model", teacher_model)

    def setup(self, student, teacher):
        feature = student.features[self.student_taps[0]].flatten(1)
        dim = feature.shape[1]
        self.projection = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(),
                                        nn.Linear(dim, dim)).to(feature.device)

    def forward(self, student, teacher, batch):
        s_tap, t_tap = self.student_taps[0], self.teacher_taps[0]
        rotated = rotations(batch.x)                                                 # (3B, C, H, H)
        s_rot = capture(self._student_model, rotated, [s_tap])
        with torch.no_grad():
            t_rot = capture(self._teacher_model, rotated, [t_tap])
        kd, tf, ss = sskd_losses(
            student.logits, teacher.logits.detach(), s_rot.logits, t_rot.logits,
            self.projection(student.features[s_tap].flatten(1)),
            self.projection(s_rot.features[s_tap].flatten(1)),
            teacher.features[t_tap].detach().flatten(1), t_rot.features[t_tap].flatten(1), batch.y,
            self.temperature, self.transform_temperature, self.similarity_temperature,
            self.transform_keep, self.similarity_keep)
        return {"kd": self.kd_weight * kd, "transform": self.transform_weight * tf,
                "similarity": self.similarity_weight * ss}
