"""FT: Kim, Park & Kwak, "Paraphrasing Complex Network: Network Compression via Factor Transfer",
NeurIPS 2018.

arXiv 1802.04977, https://arxiv.org/abs/1802.04977

A *paraphraser* P (a convolutional auto-encoder) compresses the teacher's last feature map x into a
*factor* F_T with k * C_T channels (factor rate k = 0.5), trained by reconstruction:

    L_rec = || x - P(x) ||^2

A *translator* on the student's last feature map produces F_S, and the student learns with
(p = 1)

    L_FT = || F_T / ||F_T||_2 - F_S / ||F_S||_2 ||_p

The authors' code computes L_FT as the L1 loss averaged over batch and factor elements of the
flattened, L2-normalised factors, with beta = 500 (``train_student.py --beta 500``), the default
``weight`` here (RepDistiller uses 200 on CIFAR-100). Paraphraser and translator follow the
authors' code: three 3x3 convs each with LeakyReLU(0.1), no batch norm; the decoder mirrors the
encoder with transposed convs.

Deviation: the paper pre-trains the paraphraser on the frozen teacher, then freezes it. Here it
trains from scratch alongside the student, with the reconstruction returned as its own term
("reconstruction", next to "factor"). The teacher's features are detached and the teacher factor
enters L_FT detached, so only the paraphraser learns from the reconstruction and the student never
moves the paraphraser. Because the trainer multiplies every term by ``weight`` (500), the
reconstruction term keeps the MSE's value but carries 1 / weight of its gradient: the paraphraser
then trains at the plain MSE's scale, as in the paper's separate pre-training, whatever beta is.
Early factors come from a paraphraser still learning, so the student's target moves at first.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base import Method, register_method
from ._maps import as_map, check_pairs, pool_to_common, tap_tuple


def factor_loss(student_factor: torch.Tensor, teacher_factor: torch.Tensor) -> torch.Tensor:
    """Mean |F_T/||F_T|| - F_S/||F_S|||, each factor flattened per sample: (B, k*C_t, H, W)."""
    s = F.normalize(student_factor.flatten(1), dim=1)                   # (B, k*C_t*H*W)
    t = F.normalize(teacher_factor.flatten(1), dim=1)
    return (s - t).abs().mean()


def reconstruction_loss(reconstructed: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
    """|| x - P(x) ||^2 averaged over elements."""
    return (feature - reconstructed).pow(2).mean()


def _conv_stack(channels: list[int], transposed: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers += [conv(c_in, c_out, kernel_size=3, padding=1), nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """Auto-encoder on the teacher map: (B, C, H, W) -> factor (B, kC, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, factor_channels: int):
        super().__init__()
        self.encoder = _conv_stack([channels, channels, factor_channels, factor_channels])
        self.decoder = _conv_stack([factor_channels, factor_channels, channels, channels],
                                   transposed=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        factor = self.encoder(x)
        return factor, self.decoder(factor)


@register_method("ft", category="feature", paper="Paraphrasing Complex Network: Network Compression "
                 "via Factor Transfer", venue="NeurIPS", year=2018,
                 link="https://arxiv.org/abs/1802.04977", notebook="11_sources_feature")
class FT(Method):
    """Factor transfer between the last stages. ``factor_rate`` (k) sets the factor's width when
    the paraphraser and translator are built in ``setup()``; changing it later has no effect."""

    constraints = {"weight": "nonnegative", "factor_rate": "positive"}
    student_taps = ("@last",)
    teacher_taps = ("@last",)

    def __init__(self, factor_rate: float = 0.5, weight: float = 500.0, student_taps=student_taps,
                 teacher_taps=teacher_taps):
        super().__init__(weight=weight)
        self.factor_rate = factor_rate
        self.student_taps = tap_tuple(student_taps)
        self.teacher_taps = tap_tuple(teacher_taps)

    def setup(self, student, teacher):
        pairs = self.tap_pairs()
        check_pairs("ft", pairs)
        paraphrasers, translators = [], []
        for s_tap, t_tap in pairs:
            c_s = as_map(student.features[s_tap], s_tap).shape[1]
            c_t = as_map(teacher.features[t_tap], t_tap).shape[1]
            factor = max(1, round(c_t * self.factor_rate))
            paraphrasers.append(Paraphraser(c_t, factor))
            translators.append(_conv_stack([c_s, c_s, factor, factor]))
        self.paraphrasers = nn.ModuleList(paraphrasers)
        self.translators = nn.ModuleList(translators)

    def forward(self, student, teacher, batch):
        factor_term, reconstruction = 0.0, 0.0
        modules = zip(self.tap_pairs(), self.paraphrasers, self.translators)
        for (s_tap, t_tap), paraphraser, translator in modules:
            x = as_map(teacher.features[t_tap], t_tap).detach()          # (B, C_t, H, W)
            teacher_factor, reconstructed = paraphraser(x)                # (B, k*C_t, H, W), like x
            mse = reconstruction_loss(reconstructed, x)
            # full value, 1/weight of the gradient: see the module docstring
            scale = 1.0 / self.weight if self.weight > 0 else 0.0
            reconstruction = reconstruction + mse.detach() + (mse - mse.detach()) * scale
            student_factor = translator(as_map(student.features[s_tap], s_tap))
            f_s, f_t = pool_to_common(student_factor, teacher_factor.detach())
            factor_term = factor_term + factor_loss(f_s, f_t)
        return {"factor": factor_term, "reconstruction": reconstruction}
