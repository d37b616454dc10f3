"""SimKD: Chen, Mei, Zhang, Wang, Feng & Chen, "Knowledge Distillation with the Reused Teacher
Classifier", CVPR 2022.

arXiv 2203.14001, https://arxiv.org/abs/2203.14001

The student keeps no classifier of its own: a projector P maps its last feature map f^s onto the
teacher's last feature map f^t, trained by

    L_SimKD = || f^t - P(f^s) ||_2^2        (MSE, averaged over elements)

and at test time the student predicts with the teacher's frozen classifier: y = W^t avgpool(P(f^s)).
The projector is the paper's bottleneck: 1x1 conv (C_s -> C_t/2), 3x3 conv (C_t/2 -> C_t/2) and
1x1 conv (C_t/2 -> C_t), each followed by BN and ReLU (factor 2, as the authors' code). Maps of
different spatial size are average-pooled to the smaller, as in the authors' code. The weight is 1
(authors' ``-b 1``); they train with this term alone (``-c 0 -d 0``): set the run's
``task_weight=0`` to reproduce that, otherwise the student's own classifier also learns from labels.

Evaluating a SimKD student means calling :meth:`SimKD.predict` on its outputs (the trainer's
``evaluate`` reports the student's own classifier): with ``student.eval()`` and ``method.eval()``
(so batch norm uses running statistics), ``method.predict(wb.capture(student, x,
method.student_taps))``. The teacher's classifier is taken in ``bind()`` and kept outside the
module's parameters (a plain tuple), so the optimiser never sees it and checkpoints do not copy it.
Its input width must be the teacher tap's channel count (checked in ``setup()``): MobileNetV2 and
ShuffleNetV2 put a 1x1 conv between their last stage and the pooling, so as teachers they need
``teacher_taps`` naming that conv's output (``("head",)`` in this zoo). A ViT teacher passes the check, but its head reads the
normalised class token, so the mean of the projected patch tokens only approximates its input.
"""
from __future__ import annotations

import torch
from torch import nn

from ...taps import Outputs
from ..base import Method, register_method
from ._maps import as_map, check_pairs, pool_to_common, tap_tuple


def simkd_loss(projected: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE between P(f^s) and f^t, both (B, C_t, H, W)."""
    return (teacher - projected).pow(2).mean()


def projector(student_channels: int, teacher_channels: int, factor: int = 2) -> nn.Sequential:
    """The paper's bottleneck projector: (B, C_s, H, W) -> (B, C_t, H, W)."""
    hidden = max(1, teacher_channels // factor)
    return nn.Sequential(
        nn.Conv2d(student_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
        nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
        nn.Conv2d(hidden, teacher_channels, 1, bias=False), nn.BatchNorm2d(teacher_channels),
        nn.ReLU())


@register_method("simkd", category="feature", paper="Knowledge Distillation with the Reused "
                 "Teacher Classifier", venue="CVPR", year=2022,
                 link="https://arxiv.org/abs/2203.14001", notebook="11_sources_feature")
class SimKD(Method):
    """Feature alignment to the teacher's last map; predictions through the teacher's classifier."""

    constraints = {"weight": "nonnegative"}
    student_taps = ("@last",)
    teacher_taps = ("@last",)

    def __init__(self, weight: float = 1.0, student_taps=student_taps, teacher_taps=teacher_taps):
        super().__init__(weight=weight)
        self.student_taps = tap_tuple(student_taps)
        self.teacher_taps = tap_tuple(teacher_taps)
        self._teacher_classifier: tuple[nn.Module, ...] = ()
        self._pool_size: tuple[int, int] | None = None

    def bind(self, student_model, teacher_model):
        super().bind(student_model, teacher_model)
        if teacher_model is None:
            raise ValueError("simkd reuses the teacher's classifier, so it needs a teacher")
        classifier = getattr(teacher_model, "classifier", None)
        if not isinstance(classifier, nn.Module):
            raise ValueError("simkd reuses the teacher's classifier, but the teacher "
                             f"{type(teacher_model).__name__} has no `classifier` module")
        # a plain tuple: not a sub-module, so neither the optimiser nor the state dict sees it
        self._teacher_classifier = (classifier,)

    def setup(self, student, teacher):
        pairs = self.tap_pairs()
        check_pairs("simkd", pairs)
        s_tap, t_tap = pairs[-1]
        f_s, f_t = as_map(student.features[s_tap], s_tap), as_map(teacher.features[t_tap], t_tap)
        classifier = self._teacher_classifier[0] if self._teacher_classifier else None
        wanted = getattr(classifier, "in_features", None)
        if wanted is not None and wanted != f_t.shape[1]:
            raise ValueError(
                f"simkd: the teacher's classifier takes {wanted} features, but teacher tap "
                f"{t_tap!r} has shape {tuple(f_t.shape)} ({f_t.shape[1]} channels); name the map "
                "whose pooled output feeds the classifier in teacher_taps")
        self._pool_size = tuple(pool_to_common(f_s[:1], f_t[:1])[0].shape[-2:])
        self.projector = projector(f_s.shape[1], f_t.shape[1])

    def _project(self, student: Outputs) -> torch.Tensor:
        s_tap = self.tap_pairs()[-1][0]
        f_s = as_map(student.features[s_tap], s_tap)
        if tuple(f_s.shape[-2:]) != self._pool_size:        # the student's map is the larger one
            f_s = nn.functional.adaptive_avg_pool2d(f_s, self._pool_size)
        return self.projector(f_s)                                      # (B, C_t, h, w)

    def forward(self, student, teacher, batch):
        t_tap = self.tap_pairs()[-1][1]
        projected = self._project(student)
        f_t = as_map(teacher.features[t_tap], t_tap).detach()
        projected, f_t = pool_to_common(projected, f_t)
        return {"feature": simkd_loss(projected, f_t)}

    def predict(self, student: Outputs) -> torch.Tensor:
        """Class logits of the SimKD student: the teacher's classifier on the pooled projection.

        ``student`` must hold the method's student tap (capture it with ``self.student_taps``).
        """
        if not self._teacher_classifier:
            raise RuntimeError("simkd.predict needs the teacher's classifier: "
                               "bind() the method first")
        pooled = self._project(student).mean(dim=(2, 3))                 # (B, C_t)
        return self._teacher_classifier[0](pooled)
