"""ZSKT: Micaelli & Storkey, "Zero-shot Knowledge Transfer via Adversarial Belief Matching",
NeurIPS 2019.

arXiv 1905.09768, https://arxiv.org/abs/1905.09768

No training data: a generator G makes pseudo images x_p = G(z), z ~ N(0, I), *adversarially*: it
looks for images on which the student S disagrees most with the frozen teacher T, and the student
learns to agree with the teacher there. With the teachers' and students' class distributions
t(x), s(x) and the spatial attention maps A_l of paired layers l (Algorithm 1 and eq. 1-2):

    L_G = -D_KL(t(x_p) || s(x_p))                                        G maximises the divergence
    L_S =  D_KL(t(x_p) || s(x_p))
           + beta * sum_l || f(A_l^t) / ||f(A_l^t)||_2 - f(A_l^s) / ||f(A_l^s)||_2 ||   (attention transfer)

with f(A) the channel mean of A^2 (Zagoruyko & Komodakis). Per iteration G takes n_G = 1 step and
then the student n_S = 10 steps on the same latent batch z (the images are G(z) after G's step).

In the workbench one run step is one student step: a *cycle* is n_S consecutive steps of an epoch
(the last cycle of an epoch may be shorter; cycles restart with every epoch, so a run resumed at
an epoch boundary continues exactly). A cycle's first step draws z from the epoch's seeded
generator, takes ``generator_steps`` steps of G (Adam, ``generator_lr``, gradients clipped to
``generator_clip``), then makes the cycle's images and the teacher's outputs on them once (both
fixed for the cycle, as in the authors' code, which computes the teacher once per cycle).

The student's loss is the run's methods on those images; the default reproduces the authors' code
(polo5/ZeroShotKnowledgeTransfer, ``solver.py``): its KL is ``F.kl_div`` with PyTorch's default
element mean, KL / K averaged over the batch, which for the K = 10 classes of all the paper's data
sets is KD's batch-mean KL at T = 1 with ``weight`` 0.1; its attention term is AT's mean squared
difference of the normalised maps, summed over the three stages, times beta = 250 (the ``at``
method with ``weight`` 250). The generator's loss uses the same element-mean KL
(:func:`zskt_divergence`) at ``temperature`` 1. Defaults are the code's CIFAR-10 script
(``scripts/ZeroShot/main0.sh``): z_dim 100, Adam with lr 1e-3 for G and 2e-3 for the student (pass
``optimizer="adam", lr=2e-3, weight_decay=0``), batches of 128, n_G = 1, n_S = 10, cosine decay of
both learning rates (the run's default schedule; G follows it), gradient norms clipped to 5 (the
student's: ``grad_clip=5``), 80,000 cycles. The generator is the code's: no tanh, a non-affine
batch norm last.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..registry import SCHEMES
from ._generator import DataFreeScheme, check_count, check_number


def zskt_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    temperature: float = 1.0) -> torch.Tensor:
    """The authors' D_KL(t || s) of (B, K) logits at ``temperature``: F.kl_div's default element
    mean, i.e. sum_j t_j (log t_j - log s_j) averaged over the batch and divided by K."""
    log_s = F.log_softmax(student_logits / temperature, dim=1)     # (B, K)
    log_t = F.log_softmax(teacher_logits / temperature, dim=1)     # (B, K)
    # = F.kl_div(log_s, t, reduction="mean"), which PyTorch warns will change meaning
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) / student_logits.shape[1]


def zskt_generator_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                        temperature: float = 1.0) -> torch.Tensor:
    """L_G = -D_KL(t || s): minimising it makes images on which the two disagree."""
    return -zskt_divergence(student_logits, teacher_logits, temperature)


@SCHEMES.register("zskt", category="adversarial", paper="Zero-shot Knowledge Transfer via "
                  "Adversarial Belief Matching", venue="NeurIPS", year=2019,
                  link="https://arxiv.org/abs/1905.09768", notebook="31_adversarial")
class ZSKT(DataFreeScheme):
    """Zero-shot KT: G makes images where student and teacher disagree; the student learns the
    teacher's outputs (and attention maps) there. Never reads the training split."""

    name = "zskt"
    default_methods = {"kd": {"temperature": 1.0, "weight": 0.1}, "at": {"weight": 250.0}}
    generator_bn_eps = 1e-5
    generator_tanh = False

    def __init__(self, student_steps: int = 10, generator_steps: int = 1, temperature: float = 1.0,
                 latent_dim: int = 100, generator_lr: float = 1e-3, generator_width: int = 128,
                 generator_clip: float | None = 5.0):
        super().__init__(latent_dim=latent_dim, generator_lr=generator_lr,
                         generator_width=generator_width, generator_clip=generator_clip)
        self.student_steps = check_count("zskt", "student_steps", student_steps)
        self.generator_steps = check_count("zskt", "generator_steps", generator_steps)
        self.temperature = check_number("zskt", "temperature", temperature, "positive")

    def attach(self, run) -> None:
        super().attach(run)
        if not self.methods:
            raise ValueError("zskt: the student learns through the run's methods, and there are none; "
                             "use methods=None for the paper's KL + attention transfer")

    def batches(self, generator):
        """As the base's, but the latent codes change only at a cycle's first step."""
        z = None
        for position, batch in enumerate(super().batches(generator)):
            if position % self.student_steps == 0:
                z = batch.x
            batch.x = z
            yield batch

    def adversarial_step(self, z: torch.Tensor) -> torch.Tensor:
        """``generator_steps`` updates of G towards images where student and teacher disagree;
        returns the divergence before the last update (detached)."""
        for _ in range(self.generator_steps):
            images = self.generate(z)                                  # (B, C, H, W)
            student = self.student_taps(images)                        # train mode, as the code
            teacher = self.teacher_with_grad(images)
            loss = zskt_generator_loss(student.logits, teacher.logits, self.temperature)
            self.generator_step(loss)                                  # G's parameters only
        return -loss.detach()

    def step(self, batch):
        position = int(batch.index[0]) // len(batch)                    # step in the epoch (CPU)
        if position % self.student_steps == 0 or self._cycle is None:
            divergence = self.adversarial_step(batch.x)
            with torch.no_grad():                                       # fixed for the cycle
                images = self.generate(batch.x)
                teacher = self.teacher_taps(images)
            self._cycle = (images, teacher, divergence)
        images, teacher, divergence = self._cycle
        student = self.student_taps(images)
        distill, terms = self.method_terms(student, teacher, batch)
        self.label(batch, teacher.logits)
        terms["generator.kl"] = divergence
        return distill, terms, student.logits

    def describe(self) -> dict[str, Any]:
        return {"student_steps": self.student_steps, "generator_steps": self.generator_steps,
                "temperature": self.temperature, **self.generator_describe()}
