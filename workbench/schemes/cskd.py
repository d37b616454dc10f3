"""CS-KD: Yun, Park, Lee & Shin, "Regularizing Class-wise Predictions via Self-knowledge
Distillation", CVPR 2020.

arXiv 2003.13964, https://arxiv.org/abs/2003.13964

The model's predictions on two different samples of the same class should agree: for a sample x
of class y and another sample x' of class y (eq. 2-3),

    L = L_CE(x, y) + lambda_cls * T^2 * KL(P(y | x'; theta~, T) || P(y | x; theta, T))

where theta~ is a fixed copy of the parameters: the partner's side is detached (computed without
gradient). The paper's T = 4 and lambda_cls = 1 are the default method, ``{"kd": {"temperature": 4,
"weight": 1}}``; a feature method can take its place (``at``: the same class, the same attention).

Pairs are drawn by the scheme as the paper's sampler does: for every sample of a batch, another
sample of its class from the training split, uniformly (never itself, unless it is alone in its
class). The draw depends only on the run's seed and the step, so resumed runs draw the same pairs.
The partners run through the model in train mode without gradient, as in the authors' code (their
batch-norm statistics count).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import SCHEMES
from .base import Scheme


class ClassPartners:
    """For indices of a split with labels ``labels``, a random other index of the same class."""

    def __init__(self, labels: torch.Tensor):
        labels = labels.cpu()
        self.by_class = torch.argsort(labels, stable=True)                     # indices, class by class
        counts = torch.bincount(labels)
        self.count = counts[labels]                                            # (N,) size of own class
        self.start = (torch.cumsum(counts, 0) - counts)[labels]               # (N,) its first position
        rank = torch.empty_like(self.by_class)
        rank[self.by_class] = torch.arange(len(labels))
        self.rank = rank - self.start                                          # (N,) position in class

    def __call__(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        count, start, rank = self.count[index], self.start[index], self.rank[index]
        others = (count - 1).clamp_min(1)
        pick = (torch.rand(index.shape[0], generator=generator) * others).long().clamp_max(others - 1)
        pick = pick + (pick >= rank).long()                                    # skip the sample itself
        partner = self.by_class[start + pick.clamp_max(count - 1)]
        return torch.where(count > 1, partner, index)


@SCHEMES.register("cskd", category="self", paper="Regularizing Class-wise Predictions via "
                  "Self-knowledge Distillation", venue="CVPR", year=2020,
                  link="https://arxiv.org/abs/2003.13964", notebook="20_schemes")
class CSKD(Scheme):
    """Class-wise self-KD: each sample learns from the model's (detached) outputs on a partner of
    its class."""

    name = "cskd"
    needs_teacher = False
    uses_teacher = False
    default_methods = {"kd": {"temperature": 4.0, "weight": 1.0}}

    def attach(self, run) -> None:
        super().attach(run)
        for method in self.methods.values():
            method.bind(self.student, self.student)  # the partner's outputs come from the same model
        self.partners = ClassPartners(run.data.train.y)

    def prepare(self, first) -> None:
        taps = [t for m in self.methods.values() for t in (*m.student_taps, *m.teacher_taps)]
        self.student_taps = self.recorder(self.student, taps)
        with torch.no_grad():
            out = self.student_taps(first.x)
        for method in self.methods.values():
            method.setup(out, out)

    def partner_batch(self, batch):
        generator = torch.Generator().manual_seed(self.run.config.seed * 1_000_003 + self.run.step)
        partner = self.partners(batch.index.cpu(), generator)
        return self.run.data.train.batch(partner).to(batch.x.device, non_blocking=True)

    def step(self, batch):
        partner = self.partner_batch(batch)
        out = self.student_taps(batch.x)
        with torch.no_grad():
            other = self.student_taps(partner.x)
        ce = F.cross_entropy(out.logits, batch.y)
        distill, terms = self.method_terms(out, other, batch)
        return self.run.active_task_weight * ce + distill, {"ce": ce, **terms}, out.logits
