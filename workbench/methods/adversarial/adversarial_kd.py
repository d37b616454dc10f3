"""Adversarial KD: Xu, Hsu & Huang, "Training Shallow and Thin Networks for Acceleration via
Knowledge Distillation with Conditional Adversarial Networks", ICLR 2018 Workshop.

arXiv 1709.00513, https://arxiv.org/abs/1709.00513 (later titled "Learning Loss for Knowledge
Distillation with Conditional Adversarial Networks")

Instead of a fixed distance between the teacher's and the student's outputs, a discriminator D
*learns* the loss: it tells the teacher's logits t = T(x) ("real") from the student's s = S(x)
("fake"), and the student, as the generator of a GAN, learns to fool it. In the conditional
variant D also sees the label y, so it can judge whether the logits fit their class:

    max_D  L_D = E[ log D(t | y) ] + E[ log(1 - D(s | y)) ]
    min_S  L_G = -E[ log D(s | y) ]          (the non-saturating generator loss)

and the student's total loss adds the task cross-entropy (and, as in the paper, may add a direct
term such as KD or L1: combine methods, ``methods={"kd": {}, "adversarial_kd": {}}``).

Here D is a small MLP (its input, or its input and the one-hot label, -> hidden -> hidden -> 1
score, LeakyReLU 0.2), built in ``setup`` from the first batch's shapes, so the run's single
optimiser trains it with the student. The two terms returned are

    "discriminator" = 1/2 [ BCE(D(t|y), 1) + BCE(D(s.detach()|y), 0) ]     (log 2 at chance)
    "generator"     = BCE(D'(s|y), 1) = -log sigmoid(D'(s|y))

**What D sees** (``on``): ``"probs"`` (the default) the softened class probabilities
softmax(z / T) of both networks (``temperature`` T = 4, the workbench's KD default);
``"logits"`` the raw logits, as in the paper; ``"features"`` pooled features (below). The default
deviates from the paper for stability: on raw logits the student can raise D's score without
bound by scaling its logits (a piecewise-linear D's score grows linearly with the input's scale),
and with the cross-entropy alone beside it the logits ran away until the loss was non-finite
(digits, CNN students, after ~130 steps); probabilities are bounded, and at T = 4 they show the
teacher's small probabilities (its "dark knowledge") rather than only its confidence. With a KD
or L1 term anchoring the logits, ``on="logits"`` is the paper's setting.

**One optimiser, one backward.** Each term reaches only its own player's parameters:
- the discriminator's term sees the student's logits *detached*, so its gradient trains D alone;
- the generator's term goes through D' = ``torch.func.functional_call(D, detached parameters)``,
  the same function with its parameters cut from the graph, so its gradient reaches the student's
  logits (and a feature connector) but not D.
So after ``loss.backward()`` the discriminator's gradients are exactly weight * grad L_D and the
student's exactly weight * grad L_G (plus the other terms'), and one optimiser step descends both
(tests check both equalities). We chose the detached functional copy over a gradient-reversal
layer (as CTKD uses): a reversal makes the student *ascend* D's own loss, i.e. the saturating
minimax loss log(1 - D(s)), whose gradient vanishes exactly when D wins (early in training);
the copy lets the student minimise the non-saturating -log D(s) (Goodfellow et al. 2014) that GANs
use in practice. ``weight`` multiplies both terms: it is the student's adversarial weight, and for
the discriminator a learning-rate factor (which Adam ignores).

``on="features"`` feeds D the pooled penultimate features (taps ``@embedding``, or any taps
given; 4D maps are average-pooled over space, 3D token tensors over tokens) instead of the logits;
a linear connector maps the student's width to the teacher's when they differ (it trains with the
student, through the generator term). ``conditional=False`` drops the label (an unconditional
GAN). ``hidden`` is D's width; ``on``, ``conditional`` and ``hidden`` shape D and are fixed once
the run is built. :func:`discriminator_separation` measures how well D tells the two apart.

Deviations: the paper's exact discriminator (its width, its extra supervision) and loss weights
could not be checked here; the MLP size, ``weight=1`` and the default ``on="probs"`` at T = 4 are
the workbench's choices.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ...taps import Outputs
from ..base import Method, register_method

ON = ("probs", "logits", "features")


def discriminator_input(values: torch.Tensor, labels: torch.Tensor | None, num_classes: int) -> torch.Tensor:
    """What D sees: (B, D) values, with the one-hot label appended when conditional -> (B, D [+ K])."""
    if labels is None:
        return values
    return torch.cat([values, F.one_hot(labels, num_classes).to(values.dtype)], dim=1)


def discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """1/2 [BCE(real, 1) + BCE(fake, 0)] of raw (B,) scores: log 2 when D cannot tell."""
    return 0.5 * (F.softplus(-real_scores).mean() + F.softplus(fake_scores).mean())


def generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """The non-saturating generator loss -log sigmoid(score) = BCE(score, 1), averaged: (B,) -> ()."""
    return F.softplus(-fake_scores).mean()


def pooled(feature: torch.Tensor) -> torch.Tensor:
    """(B, D) as is; (B, C, H, W) averaged over space; (B, N, D) averaged over tokens -> (B, D)."""
    if feature.dim() == 2:
        return feature
    if feature.dim() == 4:
        return feature.mean(dim=(2, 3))
    if feature.dim() == 3:
        return feature.mean(dim=1)
    return feature.flatten(1)


def build_discriminator(in_features: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, hidden), nn.LeakyReLU(0.2),
                         nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
                         nn.Linear(hidden, 1))


@register_method("adversarial_kd", category="adversarial",
                 paper="Training Shallow and Thin Networks for Acceleration via Knowledge Distillation "
                       "with Conditional Adversarial Networks",
                 venue="ICLR Workshop", year=2018, link="https://arxiv.org/abs/1709.00513",
                 notebook="31_adversarial")
class AdversarialKD(Method):
    """A (conditional) discriminator on the logits or features; the student learns to fool it."""

    constraints = {"weight": "nonnegative", "hidden": "positive", "temperature": "positive"}

    def __init__(self, weight: float = 1.0, on: str = "probs", temperature: float = 4.0,
                 conditional: bool = True, hidden: int = 64, student_taps=("@embedding",),
                 teacher_taps=("@embedding",)):
        super().__init__(weight=weight)
        self.temperature = temperature
        if on not in ON:
            raise ValueError(f"AdversarialKD: on={on!r} is not valid; choose one of {', '.join(ON)}")
        if not isinstance(conditional, bool):
            raise TypeError(f"AdversarialKD: conditional must be True or False, got {conditional!r}")
        self.on, self.conditional, self.hidden = on, conditional, hidden   # hidden: checked > 0
        if self.hidden != int(self.hidden):
            raise ValueError(f"AdversarialKD: hidden={hidden!r} is not valid; it must be a whole number")
        taps = lambda value: (value,) if isinstance(value, str) else tuple(value)  # noqa: E731
        # logits need no taps; the tap arguments only matter for on="features"
        self.student_taps = taps(student_taps) if on == "features" else ()
        self.teacher_taps = taps(teacher_taps) if on == "features" else ()
        self.discriminator: nn.Module | None = None
        self.connector: nn.Module = nn.Identity()

    def _values(self, student, teacher) -> tuple[torch.Tensor, torch.Tensor]:
        """(student values, teacher values), (B, D_s) and (B, D_t), before the connector."""
        if self.on == "logits":
            return student.logits, teacher.logits
        if self.on == "probs":
            return (F.softmax(student.logits / self.temperature, dim=1),
                    F.softmax(teacher.logits / self.temperature, dim=1))
        (s_tap, t_tap), = self.tap_pairs()[-1:]  # the deepest pair
        return pooled(student.features[s_tap]), pooled(teacher.features[t_tap])

    def setup(self, student, teacher):
        if self.on == "features" and not self.tap_pairs():
            raise ValueError("AdversarialKD: on='features' needs a student and a teacher tap")
        s, t = self._values(student, teacher)
        if self.on != "features" and s.shape[1] != t.shape[1]:
            raise ValueError(f"AdversarialKD: student logits {tuple(s.shape)} and teacher logits "
                             f"{tuple(t.shape)} have different numbers of classes")
        if s.shape[1] != t.shape[1]:  # features of different widths: project the student's
            self.connector = nn.Linear(s.shape[1], t.shape[1]).to(s.device)
        self.num_classes = student.logits.shape[1]
        extra = self.num_classes if self.conditional else 0
        self.discriminator = build_discriminator(t.shape[1] + extra, int(self.hidden)).to(s.device)

    def scores(self, values: torch.Tensor, labels: torch.Tensor, detach_params: bool = False) -> torch.Tensor:
        """D's raw score (logit of "teacher") for (B, D) values -> (B,). ``detach_params``: through
        a copy of D whose parameters are cut from the graph (gradients reach ``values`` only)."""
        inputs = discriminator_input(values, labels if self.conditional else None, self.num_classes)
        if detach_params:
            params = {name: p.detach() for name, p in self.discriminator.named_parameters()}
            return functional_call(self.discriminator, params, (inputs,)).squeeze(1)
        return self.discriminator(inputs).squeeze(1)

    def forward(self, student, teacher, batch):
        if self.discriminator is None:
            raise RuntimeError("AdversarialKD: setup() was not called (the trainer calls it on a first batch)")
        s, t = self._values(student, teacher)
        s = self.connector(s)                                   # (B, D_t)
        t = t.detach()                                          # the teacher is a fixed target
        d_loss = discriminator_loss(self.scores(t, batch.y), self.scores(s.detach(), batch.y))
        g_loss = generator_loss(self.scores(s, batch.y, detach_params=True))
        return {"discriminator": d_loss, "generator": g_loss}


@torch.no_grad()
def discriminator_separation(method: AdversarialKD, student_logits: torch.Tensor,
                             teacher_logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """How well ``method``'s discriminator tells teacher from student: accuracy at score 0 (the
    mean of its hit rates on each side) and the ROC AUC (the probability that a random teacher
    sample scores above a random student sample; 0.5 = cannot tell). ``student_logits`` and
    ``teacher_logits``: (N, K) on the same N samples (with ``on="features"``: the (N, D) pooled
    features); they are turned into what D sees as in training."""
    if method.on == "features":
        student_values, teacher_values = method.connector(student_logits), teacher_logits
    else:
        student_values, teacher_values = method._values(Outputs(student_logits), Outputs(teacher_logits))
    real = method.scores(teacher_values, labels).float()   # (N,)
    fake = method.scores(student_values, labels).float()   # (N,)
    accuracy = 0.5 * ((real > 0).float().mean() + (fake < 0).float().mean())
    # AUC by ranks (Mann-Whitney U): ties count half
    ranks = torch.cat([real, fake]).argsort().argsort().float()
    scores = torch.cat([real, fake])
    for value in scores.unique()[(scores.unique(return_counts=True)[1] > 1)]:  # average tied ranks
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    n_real, n_fake = len(real), len(fake)
    auc = (ranks[:n_real].sum() - n_real * (n_real - 1) / 2) / (n_real * n_fake)
    return {"accuracy": float(accuracy), "auc": float(auc)}
