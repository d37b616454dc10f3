"""FitNets: Romero, Ballas, Ebrahimi Kahou, Chassang, Gatta & Bengio, "FitNets: Hints for Thin Deep
Nets", ICLR 2015.

arXiv 1412.6550, https://arxiv.org/abs/1412.6550

The student's *guided* layer v_g learns to predict the teacher's *hint* layer u_h through a
regressor r with its own parameters W_r (the paper's hint loss):

    L_HT(W_Guided, W_r) = 1/2 || u_h(x; W_Hint) - r(v_g(x; W_Guided); W_r) ||^2

u_h and r must have the same non-linearity (paper, sec. 2), so the regressor ends in a ReLU when the
hint is a post-ReLU map (non-negative on the first batch) and is linear otherwise.

Workbench choices, as in mdistiller and RepDistiller: the hint term is added to the task loss in a
single stage (the paper pre-trains the guided layers first, then trains with KD); the squared error
is averaged over elements (``F.mse_loss``), and the weight is 100 (mdistiller ``FITNET.FEAT_WEIGHT``,
RepDistiller ``-b 100``). The default hint is the middle stage of each model (``@middle``: stage2
of the CIFAR ResNets and WRNs, mdistiller's ``HINT_LAYER = 2``). The regressor is a 1x1 conv + BN
(+ ReLU); where the two maps differ in size the larger is average-pooled to the smaller (mdistiller
uses strided or transposed convolutions instead, which only fit factor-of-two size ratios).
Several tap pairs give one regressor and one squared error each, summed.
"""
from __future__ import annotations

import torch
from torch import nn

from ..base import Method, register_method
from ._maps import as_map, check_pairs, middle_stage, pool_to_common, tap_tuple


def fitnet_loss(regressed: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:
    """Mean squared error between r(v_g) and u_h, both (B, C_t, H, W)."""
    return (hint - regressed).pow(2).mean()


def regressor(student_channels: int, teacher_channels: int, relu: bool) -> nn.Sequential:
    """1x1 conv + BN, with the hint's ReLU when it has one: (B, C_s, H, W) -> (B, C_t, H, W)."""
    layers = [nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False),
              nn.BatchNorm2d(teacher_channels)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


@register_method("fitnet", category="feature", paper="FitNets: Hints for Thin Deep Nets",
                 venue="ICLR", year=2015, link="https://arxiv.org/abs/1412.6550",
                 notebook="11_sources_feature")
class FitNet(Method):
    """Hint learning: a regressor maps the student's guided layer onto the teacher's hint layer.

    ``student_taps`` / ``teacher_taps``: the guided and hint layers; ``"@middle"`` (default) is the
    middle stage of each model, any other tap names work too (one regressor per pair).
    """

    constraints = {"weight": "nonnegative"}
    student_taps = ("@middle",)
    teacher_taps = ("@middle",)

    def __init__(self, weight: float = 100.0, student_taps=student_taps, teacher_taps=teacher_taps):
        super().__init__(weight=weight)
        self.student_taps = tap_tuple(student_taps)
        self.teacher_taps = tap_tuple(teacher_taps)

    def bind(self, student_model, teacher_model):
        object.__setattr__(self, "student_taps", middle_stage(student_model, self.student_taps))
        if teacher_model is not None:
            object.__setattr__(self, "teacher_taps", middle_stage(teacher_model, self.teacher_taps))
        super().bind(student_model, teacher_model)

    def setup(self, student, teacher):
        pairs = self.tap_pairs()
        check_pairs("fitnet", pairs)
        regressors = []
        for s_tap, t_tap in pairs:
            f_s = as_map(student.features[s_tap], s_tap)
            f_t = as_map(teacher.features[t_tap], t_tap)
            regressors.append(regressor(f_s.shape[1], f_t.shape[1], relu=bool((f_t >= 0).all())))
        self.regressors = nn.ModuleList(regressors)

    def forward(self, student, teacher, batch):
        total = 0.0
        for (s_tap, t_tap), reg in zip(self.tap_pairs(), self.regressors):
            # the teacher is a fixed target; pool first (cheaper, and the 1x1 conv commutes with it)
            f_s, f_t = pool_to_common(as_map(student.features[s_tap], s_tap),
                                      as_map(teacher.features[t_tap], t_tap).detach())
            total = total + fitnet_loss(reg(f_s), f_t)
        return {"hint": total}
