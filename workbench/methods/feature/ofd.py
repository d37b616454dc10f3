"""OFD: Heo, Kim, Yun, Park, Kwak & Choi, "A Comprehensive Overhaul of Feature Distillation",
ICCV 2019.

arXiv 1904.01866, https://arxiv.org/abs/1904.01866

Distil *before* the ReLU, so the student also learns the teacher's negative responses, but only as
far as they matter after the ReLU. The teacher's pre-ReLU feature T is clipped from below by a
per-channel margin m = E[t | t < 0] (t ~ N(mu, sigma^2) per channel):

    m = mu - sigma * phi(mu / sigma) / Phi(-mu / sigma)      (-3 sigma where Phi(-mu/sigma) <= 0.001)

and the student's connector output S = r(F_S) (1x1 conv + BN) is compared by a partial L2
with T := max(T, m):

    d_p(T, S) = sum_i  0                   if S_i <= T_i <= 0
                       (T_i - S_i)^2       otherwise

Stage i of N counts 1 / 2^(N - i - 1) (the deepest counts 1), the sum is divided by the batch size,
and the weight is 1e-3 (the authors' CIFAR code: ``loss_distill.sum() / batch_size / 1000``;
mdistiller ``OFD.FEAT_WEIGHT = 0.001``).

Workbench choices: the paper reads mu and sigma from the teacher's batch-norm layer before the ReLU
(its beta and gamma); here they are the per-channel mean and standard deviation of the teacher's
pre-ReLU features on the first batch, measured in ``setup()`` (so any model with pre-ReLU taps
works, whatever sits between its last BN and the ReLU), and kept as buffers so checkpoints carry
them. Taps are ``@stages_pre``; a model without pre-ReLU taps (ViT) raises a clear error. Maps of
different spatial size are average-pooled to the smaller (the authors' models always match;
mdistiller pools the teacher to the student's size).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ...taps import TapError, declared_preact_taps
from ..base import Method, register_method
from ._maps import as_map, check_pairs, pool_to_common, tap_tuple


def gaussian_negative_mean(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """E[x | x < 0] for x ~ N(mean, std^2), elementwise; -3 std where P(x < 0) <= 0.001."""
    std = std.abs().clamp_min(1e-8)
    z = mean / std
    p_negative = torch.special.ndtr(-z)                                 # Phi(-mu / sigma)
    density = torch.exp(-z.pow(2) / 2) / math.sqrt(2 * math.pi)        # phi(mu / sigma)
    conditional = mean - std * density / p_negative.clamp_min(1e-12)
    return torch.where(p_negative > 1e-3, conditional, -3 * std)


def partial_l2(student: torch.Tensor, teacher: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """The partial L2 summed over elements and divided by the batch size; margin: (1, C, 1, 1)."""
    target = torch.max(teacher, margin)
    # skip where the student is already below a non-positive target: the ReLU hides the difference
    counted = (student > target) | (target > 0)
    return ((student - target).pow(2) * counted).sum() / student.shape[0]


class Connector(nn.Module):
    """1x1 conv + BN from the student's to the teacher's channels, with the teacher's margins."""

    def __init__(self, student_channels: int, teacher_channels: int, margin: torch.Tensor):
        super().__init__()
        self.conv = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(teacher_channels)
        nn.init.normal_(self.conv.weight, 0.0, math.sqrt(2.0 / teacher_channels))  # as the authors
        self.register_buffer("margin", margin.reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


@register_method("ofd", category="feature", paper="A Comprehensive Overhaul of Feature Distillation",
                 venue="ICCV", year=2019, link="https://arxiv.org/abs/1904.01866",
                 notebook="11_sources_feature")
class OFD(Method):
    """Pre-ReLU feature distillation with a margin and a partial L2 at every paired stage."""

    constraints = {"weight": "nonnegative"}
    student_taps = ("@stages_pre",)
    teacher_taps = ("@stages_pre",)

    def __init__(self, weight: float = 1e-3, student_taps=student_taps,
                 teacher_taps=teacher_taps):
        super().__init__(weight=weight)
        self.student_taps = tap_tuple(student_taps)
        self.teacher_taps = tap_tuple(teacher_taps)

    def bind(self, student_model, teacher_model):
        for role, model, taps in (("student", student_model, self.student_taps),
                                  ("teacher", teacher_model, self.teacher_taps)):
            wants_pre = any(t in ("@stages_pre", "@last_pre") for t in taps)
            if model is not None and wants_pre and not declared_preact_taps(model):
                raise TapError(
                    f"ofd distils pre-ReLU features, but the {role} {type(model).__name__} declares "
                    "no pre-ReLU taps (model.preact_taps is empty; a ViT has no ReLU before its "
                    "stage outputs). Use a CNN, or pass student_taps/teacher_taps naming the module "
                    "paths of pre-ReLU outputs.")
        super().bind(student_model, teacher_model)

    def setup(self, student, teacher):
        pairs = self.tap_pairs()
        check_pairs("ofd", pairs)
        connectors = []
        for s_tap, t_tap in pairs:
            f_s = as_map(student.features[s_tap], s_tap)
            f_t = as_map(teacher.features[t_tap], t_tap).float()
            mean, std = f_t.mean(dim=(0, 2, 3)), f_t.std(dim=(0, 2, 3), correction=0)  # (C_t,)
            margin = gaussian_negative_mean(mean, std)
            connectors.append(Connector(f_s.shape[1], f_t.shape[1], margin))
        self.connectors = nn.ModuleList(connectors)

    def forward(self, student, teacher, batch):
        pairs = self.tap_pairs()
        total = 0.0
        for i, ((s_tap, t_tap), connector) in enumerate(zip(pairs, self.connectors)):
            f_s, f_t = pool_to_common(as_map(student.features[s_tap], s_tap),
                                      as_map(teacher.features[t_tap], t_tap).detach())
            stage_weight = 1 / 2 ** (len(pairs) - i - 1)                    # the deepest counts 1
            total = total + stage_weight * partial_l2(connector(f_s), f_t, connector.margin)
        return {"partial_l2": total}
