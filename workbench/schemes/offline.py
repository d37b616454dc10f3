"""Offline distillation: a pretrained teacher, frozen by construction, teaches the student.

Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", NeurIPS DL Workshop 2015,
https://arxiv.org/abs/1503.02531. With the student's outputs S and the frozen teacher's T:

    L = task_weight * CE(y, S) + sum over methods m of weight_m * term_m(S, T)

``label_smoothing=eps`` replaces the one-hot y by (1 - eps) * onehot + eps / K (Szegedy et al.,
CVPR 2016): with no teacher and no methods that is the uniform label-smoothing baseline that
notebook 20 compares Tf-KD with. ``cache=True`` keeps the teacher's outputs per training sample
(:mod:`workbench.engine.cache`), so epochs after the first skip its forward pass; the cache checks
that the inputs and the teacher are unchanged before it serves, and says why when it refuses.
"""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import nn

from ..engine import distributed
from ..engine.cache import TeacherCache
from ..registry import SCHEMES
from .base import Scheme


def freeze(teacher: nn.Module) -> nn.Module:
    """Put ``teacher`` in eval mode and turn off its gradients, in place; return it.

    Eval mode fixes batch-norm statistics and dropout, so the teacher's outputs are a function of
    the input alone; no parameter requires a gradient, so no loss can update it.
    """
    teacher.eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
        parameter.grad = None  # left over from the teacher's own training
    return teacher


def is_frozen(teacher: nn.Module) -> bool:
    return not teacher.training and not any(p.requires_grad for p in teacher.parameters())


@SCHEMES.register("offline", category="offline", paper="Distilling the Knowledge in a Neural Network",
                  venue="NeurIPS Deep Learning Workshop", year=2015,
                  link="https://arxiv.org/abs/1503.02531", notebook="20_schemes")
class Offline(Scheme):
    """The default scheme; with no teacher it is plain supervised training (a teacher's own run).

    ``cache``: keep the teacher's outputs per training sample (and augmentation seed) so later
    epochs skip its forward pass; ``cache_views``: replayable augmentations per sample;
    ``cache_max_mb``: the most memory the cache may hold (more turns it off, with the reason).
    ``label_smoothing``: eps of the task loss's label smoothing (0: plain cross-entropy).
    ``self.cache`` is the :class:`~workbench.engine.cache.TeacherCache` (None when off):
    ``cache.reason`` says why it stopped serving, ``cache.teacher_forwards`` / ``cache.served``
    count batches.
    """

    name = "offline"
    needs_teacher = False  # `wb.train` uses it without one

    def __init__(self, cache: bool = False, cache_views: int = 1, cache_max_mb: float = 2048.0,
                 label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"offline: label_smoothing={label_smoothing!r} must be in [0, 1)")
        self.use_cache, self.cache_views = bool(cache), int(cache_views)
        self.cache_max_mb = float(cache_max_mb)
        self.label_smoothing = float(label_smoothing)
        self.cache: TeacherCache | None = None

    def attach(self, run) -> None:
        if run.teacher is not None:
            freeze(run.teacher)
        super().attach(run)
        if self.use_cache and run.teacher is None:
            raise ValueError("offline: cache=True caches a teacher's outputs, but the run has no teacher")

    def prepare(self, first) -> None:
        super().prepare(first)  # the first batch's teacher pass is not cached: it is not a step
        if self.use_cache:
            self.cache = TeacherCache(len(self.run.data.train), views=self.cache_views,
                                      max_bytes=int(self.cache_max_mb * 2 ** 20))

    def teacher_outputs(self, batch):
        if self.cache is None:
            return super().teacher_outputs(batch)
        return self.cache.outputs(batch, self.teacher, super().teacher_outputs, epoch=self.run.epoch,
                                  rows=distributed.pristine_rows(self.run, batch))

    def step(self, batch):
        # the teacher first: its forward's working memory is freed before the student's forward
        # starts keeping activations for the backward (the other order adds it to the peak)
        teacher = self.teacher_outputs(batch)
        student = self.student_taps(batch.x)
        ce = F.cross_entropy(student.logits, batch.y, label_smoothing=self.label_smoothing)
        distill, terms = self.method_terms(student, teacher, batch)
        return self.run.active_task_weight * ce + distill, {"ce": ce, **terms}, student.logits

    def extra_metrics(self, test, batch_size):
        if self.cache is None:
            return {}
        return {"cache_teacher_forwards": float(self.cache.teacher_forwards),
                "cache_served": float(self.cache.served), "cache_on": float(self.cache.reason is None)}

    def describe(self) -> dict[str, Any]:
        # only the settings that differ from the defaults, so runs of the plain scheme keep the
        # config hash they had before these settings existed (and are reused from the store)
        defaults = {"cache": False, "cache_views": 1, "cache_max_mb": 2048.0, "label_smoothing": 0.0}
        now = {"cache": self.use_cache, "cache_views": self.cache_views,
               "cache_max_mb": self.cache_max_mb, "label_smoothing": self.label_smoothing}
        return {k: v for k, v in now.items() if v != defaults[k]}
