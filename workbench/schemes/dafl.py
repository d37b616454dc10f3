"""DAFL: Chen, Wang, Xu, Yang, Liu, Shi, Xu, Xu & Tian, "Data-Free Learning of Student Networks",
ICCV 2019.

arXiv 1904.01186, https://arxiv.org/abs/1904.01186

No training data: the frozen teacher N_T acts as a fixed discriminator, and a generator G learns to
make images x = G(z), z ~ N(0, I), that look to the teacher like its training data. With the
teacher's outputs y_T = N_T(x) (logits), its features f_T (the penultimate vector) and its
predicted classes t = argmax y_T, G minimises (eq. 4-7 of the paper):

    L_oh = 1/n sum_i H_cross(y_T^i, t^i)              one-hot: the teacher is sure of its answer
    L_a  = -1/n sum_i ||f_T^i||_1                       activation: strong teacher features
    L_ie = -H_info(1/n sum_i softmax(y_T^i))            information entropy: balanced classes
    L_G  = L_oh + alpha * L_a + beta * L_ie

and the student N_S learns from the teacher on the same images (detached from G), by KD at T = 1
(eq. 8): L_KD = 1/n sum_i H_cross(softmax(y_T^i), softmax(y_S^i)) (equal, up to the teacher's
entropy which has no gradient, to KL(p_T || p_S): the default method
``{"kd": {"temperature": 1, "weight": 1}}``; any method of chapter 1 can replace it). G and the
student take one step each per batch, on the same generated images, as in the authors' code.

Defaults are the official code's for MNIST (huawei-noah/Data-Efficient-Model-Compression,
``DAFL/DAFL_train.py``): ``one_hot=1``, ``activation=0.1`` (alpha), ``entropy=5`` (beta),
``latent_dim=100``, Adam for G with ``generator_lr=0.2``; the student there uses Adam with lr 2e-3
(pass ``optimizer="adam", lr=2e-3, weight_decay=0`` to the run) and batches of 512. As in that code,
the activation term is the mean of |f_T| over batch and features (the paper's 1/n sum of L1 norms
divided by the feature size), and the entropy term is sum_j p_j log10 p_j of the batch-mean
prediction p (the paper's -H_info with H_info(p) = -1/k sum_j p_j log p_j, times k / ln 10: the
scale beta = 5 was chosen for). The generator is the code's: tanh before the last, non-affine
batch norm, and eps = 0.8 in its two inner batch norms (``BatchNorm2d(128, 0.8)``: the code passes
0.8 as eps). ``activation_tap`` is the teacher tap of f_T (default ``"@embedding"``, the pooled
penultimate vector, DAFL's ``out_feature``). G's learning rate follows the run's schedule (cosine
by default); the authors' MNIST script keeps both learning rates constant (``schedule="constant"``).
Paper's MNIST claim (Table 1): a LeNet-5-half student
learnt without data reaches 98.20% against its LeNet-5 teacher's 98.91%.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..registry import SCHEMES
from ..taps import resolve_tap
from ._generator import DataFreeScheme, check_number, expand_teacher_tap


def one_hot_loss(teacher_logits: torch.Tensor) -> torch.Tensor:
    """L_oh: cross-entropy of the teacher's logits (B, K) against their own argmax."""
    return F.cross_entropy(teacher_logits, teacher_logits.detach().argmax(1))


def activation_loss(features: torch.Tensor) -> torch.Tensor:
    """L_a: minus the mean absolute value of the teacher's features (B, ...)."""
    return -features.abs().mean()


def information_entropy_loss(teacher_logits: torch.Tensor) -> torch.Tensor:
    """L_ie = sum_j p_j log10 p_j of the batch-mean teacher prediction p (K,): minus its entropy
    in base 10, lowest (-log10 K) when the batch is spread evenly over the classes."""
    mean = F.softmax(teacher_logits, dim=1).mean(0)                    # (K,)
    return torch.special.xlogy(mean, mean).sum() / math.log(10.0)      # 0 log 0 = 0


def dafl_generator_loss(teacher_logits: torch.Tensor, features: torch.Tensor, one_hot: float = 1.0,
                        activation: float = 0.1, entropy: float = 5.0
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_G = one_hot * L_oh + activation * L_a + entropy * L_ie, and the three terms unweighted."""
    terms = {"one_hot": one_hot_loss(teacher_logits), "activation": activation_loss(features),
             "entropy": information_entropy_loss(teacher_logits)}
    total = one_hot * terms["one_hot"] + activation * terms["activation"] + entropy * terms["entropy"]
    return total, terms


@SCHEMES.register("dafl", category="adversarial", paper="Data-Free Learning of Student Networks",
                  venue="ICCV", year=2019, link="https://arxiv.org/abs/1904.01186",
                  notebook="31_adversarial")
class DAFL(DataFreeScheme):
    """Data-free learning: G makes images the teacher is sure of, with strong features and
    balanced classes; the student learns the teacher's outputs on them. Never reads the training
    split (train on ``wb.data.seal_training_data(bundle)`` to prove it)."""

    name = "dafl"
    default_methods = {"kd": {"temperature": 1.0, "weight": 1.0}}
    generator_bn_eps = 0.8     # the official code's BatchNorm2d(128, 0.8)
    generator_tanh = True

    def __init__(self, one_hot: float = 1.0, activation: float = 0.1, entropy: float = 5.0,
                 latent_dim: int = 100, generator_lr: float = 0.2, generator_width: int = 128,
                 generator_clip: float | None = None, activation_tap: str = "@embedding"):
        super().__init__(latent_dim=latent_dim, generator_lr=generator_lr,
                         generator_width=generator_width, generator_clip=generator_clip)
        self.one_hot = check_number("dafl", "one_hot", one_hot, "nonnegative")
        self.activation = check_number("dafl", "activation", activation, "nonnegative")
        self.entropy = check_number("dafl", "entropy", entropy, "nonnegative")
        if not isinstance(activation_tap, str) or not activation_tap:
            raise ValueError(f"dafl: activation_tap={activation_tap!r} must be a tap name "
                             "(e.g. '@embedding' or 'stage3')")
        self.activation_tap = activation_tap

    def attach(self, run) -> None:
        super().attach(run)
        if not self.methods:
            raise ValueError("dafl: the student learns through the run's methods, and there are none; "
                             "use methods=None for the paper's KD at T = 1")
        self.feature_tap = expand_teacher_tap(run.teacher, self.activation_tap)
        resolve_tap(run.teacher, self.feature_tap)      # an unknown tap fails here, by name

    def extra_teacher_taps(self) -> list[str]:
        return [self.feature_tap]

    def step(self, batch):
        images = self.generate(batch.x)                          # (B, C, H, W), gradients to G
        teacher = self.teacher_with_grad(images)                 # gradients through T into images
        g_loss, g_terms = dafl_generator_loss(teacher.logits, teacher.features[self.feature_tap],
                                              self.one_hot, self.activation, self.entropy)
        # the student learns from the same images, detached from G, and the teacher's answers
        student = self.student_taps(images.detach())
        distill, terms = self.method_terms(student, teacher.detach(), batch)
        self.generator_step(g_loss)
        self.label(batch, teacher.logits)
        terms.update({f"generator.{k}": v.detach() for k, v in g_terms.items()})
        terms["generator.loss"] = g_loss.detach()
        return distill, terms, student.logits

    def describe(self) -> dict[str, Any]:
        return {"one_hot": self.one_hot, "activation": self.activation, "entropy": self.entropy,
                **self.generator_describe(), "activation_tap": self.activation_tap}
