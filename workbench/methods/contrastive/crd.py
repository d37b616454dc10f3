"""CRD: Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020.

arXiv 1910.10699, https://arxiv.org/abs/1910.10699 (code: RepDistiller, ``crd/``)

The student's representation should let a critic tell "the student and the teacher saw the same
input" (a positive pair) from "different inputs" (negatives); maximising a lower bound on the mutual
information between the two representations. Both embeddings are projected linearly to a common
128-d space and L2-normalised (g^S(s), g^T(t)). For an anchor with N negatives (the paper's eq. 18-19,
with the NCE critic of its memory-bank implementation):

    h(s, t) = exp(g^T(t)' g^S(s) / tau) / Z
    L_critic = - E_pos[ log h / (h + N / M) ] - N E_neg[ log (N / M) / (h + N / M) ]

where M is the number of training samples (the noise distribution is uniform over them) and Z is a
constant fixed on the first batch (Z = M * mean of exp(.) there). The negatives are representations
of other training samples kept in memory banks, one row per sample index, each updated with the
newest embedding by momentum m and re-normalised: w_i <- normalize(m w_i + (1 - m) g(x_i)). As in
RepDistiller the loss is symmetric: the student's embedding contrasted against the teacher's bank
(term ``student_anchor``) plus the teacher's embedding against the student's bank
(``teacher_anchor``, which trains the teacher-side projection).

Written out, with e = exp(g^T(t)' g^S(s) / tau) / mean_0 (mean_0: the first batch's mean of exp),
h / (h + N / M) = e / (e + N): M cancels, so the loss is the binary logistic loss
softplus(log N - log e) for the positive plus softplus(log e - log N) per negative, computed in log
space here (RepDistiller's eps = 1e-7 aside, the same number).

Defaults: feature dimension 128, tau = 0.07, momentum 0.5, weight 0.8 (RepDistiller's ``-b 0.8``,
mdistiller's ``CRD.LOSS.FEAT_WEIGHT``), on the penultimate embeddings. ``n_negatives`` = 4096
(RepDistiller uses 16384 for CIFAR-100's 50,000 images), capped at M - 1. Negatives are drawn
uniformly among the other sample indices; RepDistiller draws them among samples of other classes
(its dataset's ``mode='exact'``), a label-dependent detail left out here.

The banks need the training-set size M. ``n_data`` gives it; with ``n_data=0`` (default) the banks
start with the first batch's size and grow to cover the largest sample index seen (``batch.index``
lives on the host, so this reads no device value). The trainer shuffles every training index into
the first epoch, so from then on the banks have one row per training sample; new rows start random,
as every row does in RepDistiller. Checkpoints carry the banks at their size.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..base import Method, register_method
from ..feature._maps import tap_tuple


def nce_loss(logits: torch.Tensor) -> torch.Tensor:
    """The CRD critic's NCE loss from log e = log(exp(score / tau) / mean_0), (B, 1 + N) with the
    positive in column 0: mean over anchors of softplus(log N - l_pos) + sum_neg softplus(l_neg - log N)."""
    log_n = math.log(logits.shape[1] - 1)
    positive = F.softplus(log_n - logits[:, 0])                                     # (B,)
    negative = F.softplus(logits[:, 1:] - log_n).sum(1)                              # (B,)
    return (positive + negative).mean()


def draw_contrast(index: torch.Tensor, rows: int, negatives: int) -> torch.Tensor:
    """(B, 1 + N) bank rows per anchor: its own index, then N indices drawn uniformly among the
    other rows (the anchor's index shifted by 1 .. rows - 1, modulo rows)."""
    offsets = torch.randint(1, rows, (index.shape[0], negatives), device=index.device)
    return torch.cat([index[:, None], (index[:, None] + offsets) % rows], 1)


def contrast_logits(v_s: torch.Tensor, v_t: torch.Tensor, bank_student: torch.Tensor,
                    bank_teacher: torch.Tensor, contrast: torch.Tensor, temperature: float) -> torch.Tensor:
    """score / tau of each anchor against the other model's bank rows, in float32: (2, B, 1 + N);
    [0]: student embeddings v_s (B, F) against the teacher's bank, [1]: v_t against the student's."""
    with torch.autocast(v_s.device.type, enabled=False):   # float32 under bf16 autocast
        scores_s = torch.einsum("bnf,bf->bn", bank_teacher[contrast], v_s.float())
        scores_t = torch.einsum("bnf,bf->bn", bank_student[contrast], v_t.float())
    return torch.stack([scores_s, scores_t]) / temperature


def random_bank(rows: int, dim: int, device=None) -> torch.Tensor:
    """RepDistiller's initial bank rows: uniform in [-stdv, stdv], stdv = 1 / sqrt(dim / 3)."""
    stdv = 1.0 / math.sqrt(dim / 3)
    return torch.rand(rows, dim, device=device) * (2 * stdv) - stdv


def momentum_update(bank: torch.Tensor, index: torch.Tensor, embedding: torch.Tensor,
                    momentum: float) -> None:
    """w_i <- normalize(m w_i + (1 - m) v_i) for the rows ``index``, in place."""
    rows = bank.index_select(0, index) * momentum + embedding.detach().to(bank.dtype) * (1 - momentum)
    bank.index_copy_(0, index, F.normalize(rows, dim=1))


class Embed(nn.Module):
    """Linear projection to the contrast space, then L2 normalisation: (B, D) -> (B, feat_dim)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)


@register_method("crd", category="contrastive", paper="Contrastive Representation Distillation",
                 venue="ICLR", year=2020, link="https://arxiv.org/abs/1910.10699",
                 notebook="36_contrastive")
class CRD(Method):
    """Contrastive representation distillation with memory banks; terms ``student_anchor`` and
    ``teacher_anchor``. ``student_taps`` / ``teacher_taps``: one tap each (default the embedding;
    a map is flattened, as RepDistiller's ``Embed`` does)."""

    constraints = {"weight": "nonnegative", "temperature": "positive", "momentum": "unit",
                   "n_negatives": "positive", "feat_dim": "positive", "n_data": "nonnegative"}
    student_taps = ("@embedding",)
    teacher_taps = ("@embedding",)

    def __init__(self, feat_dim: int = 128, n_negatives: int = 4096, temperature: float = 0.07,
                 momentum: float = 0.5, n_data: int = 0, weight: float = 0.8,
                 student_taps=student_taps, teacher_taps=teacher_taps):
        super().__init__(weight=weight)
        self.feat_dim = feat_dim
        self.n_negatives = n_negatives
        self.temperature = temperature
        self.momentum = momentum
        self.n_data = n_data
        for name in ("feat_dim", "n_negatives", "n_data"):
            if getattr(self, name) != int(getattr(self, name)):
                raise ValueError(f"crd: {name}={getattr(self, name)!r} must be a whole number")
        self.student_taps = tap_tuple(student_taps)
        self.teacher_taps = tap_tuple(teacher_taps)

    def setup(self, student, teacher):
        (s_tap, t_tap), = self._pair()
        f_s, f_t = student.features[s_tap], teacher.features[t_tap]
        dim = int(self.feat_dim)
        self.embed_student = Embed(f_s[0].numel(), dim).to(f_s.device)
        self.embed_teacher = Embed(f_t[0].numel(), dim).to(f_t.device)
        rows = int(self.n_data) or f_s.shape[0]
        self.register_buffer("bank_student", random_bank(rows, dim, f_s.device))  # g^S of each sample
        self.register_buffer("bank_teacher", random_bank(rows, dim, f_s.device))  # g^T of each sample
        # log mean_0 of exp(score / tau), per direction; NaN until the first training step sets it
        self.register_buffer("log_norm", torch.full((2,), float("nan"), device=f_s.device))

    def _pair(self) -> list[tuple[str, str]]:
        pairs = self.tap_pairs()
        if len(pairs) != 1 or len(self.student_taps) != 1 or len(self.teacher_taps) != 1:
            raise ValueError(f"crd: give one student and one teacher tap, got {self.student_taps} and "
                             f"{self.teacher_taps}")
        return pairs

    def _grow(self, rows: int) -> None:
        """Extend both banks with random rows up to ``rows`` (see the module docstring)."""
        for name in ("bank_student", "bank_teacher"):
            bank = getattr(self, name)
            extra = random_bank(rows - bank.shape[0], bank.shape[1], bank.device).to(bank.dtype)
            setattr(self, name, torch.cat([bank, extra]))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a checkpoint's banks may be larger than the first batch's: take the checkpoint's size
        for name in ("bank_student", "bank_teacher"):
            saved, mine = state_dict.get(prefix + name), self._buffers.get(name)
            if saved is not None and mine is not None and saved.shape != mine.shape:
                self._buffers[name] = mine.new_empty(saved.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, student, teacher, batch):
        (s_tap, t_tap), = self._pair()
        v_s = self.embed_student(student.features[s_tap])                          # (B, F)
        v_t = self.embed_teacher(teacher.features[t_tap].detach())                 # (B, F)
        top = int(batch.index.max()) + 1   # batch.index is on the host: no device sync
        if top > self.bank_student.shape[0]:
            self._grow(top)
        rows = self.bank_student.shape[0]
        index = batch.index.to(v_s.device, non_blocking=True)                     # (B,)
        negatives = min(int(self.n_negatives), rows - 1)
        if negatives < 1:
            raise ValueError("crd: the memory banks have a single row; contrast needs two or more samples")
        contrast = draw_contrast(index, rows, negatives)                           # (B, 1 + N)
        logits = contrast_logits(v_s, v_t, self.bank_student, self.bank_teacher, contrast,
                                 self.temperature)                                 # (2, B, 1 + N)
        with torch.no_grad():  # Z is fixed by the first batch (RepDistiller), per direction
            first = logits.flatten(1).logsumexp(1) - math.log(logits[0].numel())
            self.log_norm.copy_(torch.where(torch.isnan(self.log_norm), first, self.log_norm))
            momentum_update(self.bank_student, index, v_s, self.momentum)
            momentum_update(self.bank_teacher, index, v_t, self.momentum)
        logits = logits - self.log_norm[:, None, None]
        return {"student_anchor": nce_loss(logits[0]), "teacher_anchor": nce_loss(logits[1])}
